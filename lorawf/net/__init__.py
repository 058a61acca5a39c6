"""All I/O with a ComfyUI server: settings, HTTP, the websocket, uploads, downloads, the schema cache."""
