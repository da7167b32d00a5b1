"""Waiting for an event with a time limit, in a way that a cancellation is never lost.

On Python 3.11, ``asyncio.wait_for`` on ``event.wait()`` returns normally when the task is
cancelled at the moment the event is set: the cancellation is swallowed and the loop
around it goes on. A role whose lease was lost then never stops its work, and never
stands by again (seen in the HA test: a woken publisher that had just been told of a
revocation). ``asyncio.timeout`` keeps the cancellation; the product waits through here
(``tests/test_layout.py`` refuses ``asyncio.wait_for`` in product code).
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set or ``seconds`` have passed (None: no limit); whether it was set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
