"""How much the client keeps in flight, in a module that imports nothing (the command line reads these for
its option defaults, and ``submit --no-wait`` never loads the transfer code).

Measured over the bench's shaped link (50 ms round trip, 100 Mbit/s; docs/bench.md).
"""

#: Websocket messages buffered between the reader and the fold; beyond it the reader waits (flat memory).
INBOX_SIZE = 4096
#: Files in flight at once by default (``--upload-jobs``): 8 kept the link full while the server buffers
#: only a few bodies at a time.
DEFAULT_UPLOAD_JOBS = 8
MAX_UPLOAD_JOBS = 64
#: Files downloaded at once: a run's small validation images are latency-bound one by one; 8 overlapping
#: (on kept-alive connections) kept the link full where 4 left it 17% idle. The fast path's threads come
#: from asyncio's default pool (min(32, CPUs + 4) threads).
DOWNLOAD_JOBS = 8
