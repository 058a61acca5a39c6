"""Tiny TCP servers on 127.0.0.1 for tests that need exact bytes on the wire (not the ComfyUI test server)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def tcp_server(handle: Callable[[socket.socket], None], *, threaded: bool = False) -> Iterator[int]:
    """Accept connections until the block ends and give each to ``handle`` (which closes it), one after the
    other or, with ``threaded``, each in a thread of its own; yields the port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            if threaded:
                threading.Thread(target=handle, args=(conn,), daemon=True).start()
            else:
                handle(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
