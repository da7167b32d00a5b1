"""``wait_event``: a wait with a time limit that never loses a cancellation."""

from __future__ import annotations

import asyncio

from revocation.waiting import wait_event


async def test_it_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    assert await wait_event(event, None) is True


async def test_a_loop_cancelled_as_its_event_is_set_ends() -> None:
    """The publisher's and pre-signer's loops: woken and cancelled in the same instant, the task must end.
    (Python 3.11's ``asyncio.wait_for`` returns normally here, and the loop goes on.)"""
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await wait_event(event, 10)
            event.clear()
            rounds += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    event.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done and task.cancelled()
    assert rounds == 0
