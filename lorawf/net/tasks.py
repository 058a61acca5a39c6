"""Running many transfers at once, a bounded number at a time, with a plain first error.

The first failure cancels the other transfers (one bad file stops the upload, as a user expects) and is
raised as itself, so callers map one lorawf error to one exit code. (``asyncio.TaskGroup`` would raise an
``ExceptionGroup`` and needs Python 3.11; lorawf runs on 3.10.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


async def run_bounded(items: Iterable[T], work: Callable[[T], Awaitable[None]], limit: int) -> None:
    """``await work(item)`` for every item, at most ``limit`` at once, started in the order of ``items``.

    The first exception cancels the others and is raised as itself.
    """
    slots = asyncio.Semaphore(limit)

    async def one(item: T) -> None:
        async with slots:
            await work(item)

    await run_all(one(item) for item in items)


async def run_all(awaitables: Iterable[Awaitable[Any]]) -> None:
    """Run every awaitable concurrently; the first exception cancels the rest and is raised as itself.

    Cancelling the caller cancels every one of them and waits for them to end before it propagates.
    """
    tasks = [asyncio.ensure_future(aw) for aw in awaitables]
    if not tasks:
        return
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        await _cancel(tasks)
        raise
    errors = [t for t in tasks if t in done and not t.cancelled() and t.exception() is not None]  # all retrieved
    failed = errors[0] if errors else None
    if failed is None:
        return
    await _cancel(list(pending))
    error = failed.exception()
    assert error is not None
    raise error


async def _cancel(tasks: Sequence[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
