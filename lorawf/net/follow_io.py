"""Sizes shared by the websocket reader and the follower, in a module that imports nothing heavy
(``submit --no-wait`` never opens a websocket, so it never imports the websockets library)."""

#: Websocket messages buffered between the reader and the fold; beyond it the reader waits (flat memory).
INBOX_SIZE = 4096
