"""ComfyUI's rules and messages: node schemas, validation, preflight, the event fold, the follow policy.

Pure: no sockets. Fed what a server said; returns what it means and what to do next.
"""
