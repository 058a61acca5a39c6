"""The workflow graph: load, convert, patch, build and regenerate templates. Pure: no server, no sockets."""
