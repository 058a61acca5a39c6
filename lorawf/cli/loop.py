"""One event loop per command, with Ctrl-C turned into a cancellation of the command's task."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on a new loop; the first Ctrl-C cancels it (the engine then cancels our prompt
    and raises :class:`~lorawf.errors.Cancelled`). A cancellation that no step turned into an error is
    :class:`~lorawf.errors.Cancelled` too: exit 130, never a traceback."""
    import asyncio
    import contextlib
    import signal

    from lorawf.errors import Cancelled

    async def main() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        installed = False
        if task is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGINT, task.cancel)
                installed = True
        try:
            return await factory()
        finally:
            if installed:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise Cancelled("cancelled") from None
