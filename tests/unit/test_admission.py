"""Messages are admitted in arrival order, a few at a time, and none waits long or is lost."""
import asyncio
import time
from typing import List

import pytest
from rasa.core.processor import MessageProcessor

from lakala_server import admission, patches
from lakala_server.admission import FifoSlots, admitted
from lakala_server.patches import admission as admission_patch


def test_the_server_handles_messages_through_the_slots() -> None:
    patches.install()  # as the server's start hook does
    wrapped = MessageProcessor.handle_message
    assert wrapped is not admission_patch.RASA_HANDLE_MESSAGE
    assert wrapped.__wrapped__ is admission_patch.RASA_HANDLE_MESSAGE  # Rasa's own, in a slot
    patches.install()  # a second call changes nothing
    assert MessageProcessor.handle_message is wrapped


def test_waiters_get_the_slot_in_arrival_order_and_nobody_barges_in() -> None:
    async def scenario() -> List[str]:
        slots = FifoSlots(1)
        order: List[str] = []
        assert await slots.acquire(1.0)  # "first" holds the only slot

        async def waiter(name: str) -> None:
            assert await slots.acquire(1.0)
            order.append(name)
            await asyncio.sleep(0.01)
            slots.release()

        tasks = []
        for name in ("b", "c", "d"):
            tasks.append(asyncio.create_task(waiter(name)))
            await asyncio.sleep(0)  # each is queued before the next arrives
        slots.release()
        # Arrives after the release, before "b" has run: it must queue behind b, c and d.
        tasks.append(asyncio.create_task(waiter("late")))
        await asyncio.gather(*tasks)
        assert slots.free == 1 and slots.waiting == 0
        return order

    assert asyncio.run(scenario()) == ["b", "c", "d", "late"]


def test_no_more_than_the_slots_run_at_once_and_every_call_runs() -> None:
    async def scenario() -> None:
        pool = FifoSlots(3)
        running, peak, done = 0, 0, []

        async def handle(index: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)  # waiting for the action server, say
            running -= 1
            done.append(index)
            return index * 2

        results = await asyncio.gather(*(admitted(handle, lambda: pool)(i) for i in range(12)))
        assert results == [i * 2 for i in range(12)]
        assert peak == 3
        assert done == list(range(12))  # they finished in the order they came
        assert pool.free == 3

    asyncio.run(scenario())


def test_a_message_waits_at_most_max_wait_behind_hanging_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "MAX_WAIT_S", 0.1)

    async def scenario() -> None:
        pool = FifoSlots(1)
        hang = asyncio.Event()

        async def handle(text: str) -> str:
            if text == "lookup":
                await hang.wait()  # an action server that does not answer
            return f"answer to {text}"

        run = admitted(handle, lambda: pool)
        stuck = asyncio.create_task(run("lookup"))
        await asyncio.sleep(0)
        started = time.monotonic()
        assert await run("faq") == "answer to faq"
        assert 0.09 <= time.monotonic() - started < 0.5
        hang.set()
        assert await stuck == "answer to lookup"
        # The message that went ahead without a slot did not give one back: still one.
        assert pool.free == 1 and pool.waiting == 0

    asyncio.run(scenario())


def test_a_failing_message_frees_its_slot() -> None:
    async def scenario() -> None:
        pool = FifoSlots(1)

        async def handle() -> None:
            raise RuntimeError("backend down")

        with pytest.raises(RuntimeError):
            await admitted(handle, lambda: pool)()
        assert pool.free == 1

    asyncio.run(scenario())


def test_a_cancelled_waiter_loses_no_slot() -> None:
    async def scenario() -> None:
        pool = FifoSlots(1)
        assert await pool.acquire(1.0)
        gone = asyncio.create_task(pool.acquire(1.0))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        pool.release()
        assert pool.free == 1
        assert await pool.acquire(0.01)  # at once, not after the timeout

        # Cancelled in the same turn as it was handed the slot: it gives the slot back.
        handed = asyncio.create_task(pool.acquire(1.0))
        await asyncio.sleep(0)
        pool.release()
        handed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handed
        assert pool.free == 1

    asyncio.run(scenario())


def test_a_pool_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        FifoSlots(0)


def test_waiters_that_gave_up_are_not_left_queued() -> None:
    async def scenario() -> None:
        pool = FifoSlots(1)
        assert await pool.acquire(1.0)  # held by a message that hangs
        for _ in range(5):
            assert not await pool.acquire(0.01)
        cancelled = asyncio.create_task(pool.acquire(1.0))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert len(pool._waiters) == 0
        pool.release()
        assert pool.free == 1

    asyncio.run(scenario())


def test_a_full_queue_lets_the_next_message_go_ahead_at_once() -> None:
    async def scenario() -> None:
        pool = FifoSlots(1, max_waiting=3)
        assert await pool.acquire(1.0)  # held by a message that hangs
        queued = [asyncio.create_task(pool.acquire(5.0)) for _ in range(3)]
        await asyncio.sleep(0)
        assert pool.waiting == 3
        started = time.monotonic()
        assert not await pool.acquire(5.0)  # not queued: it goes ahead without a slot
        assert time.monotonic() - started < 0.1 and pool.waiting == 3
        pool.release()  # the queued ones still get the slot in order
        assert await queued[0]
        for task in queued[1:]:
            task.cancel()
        await asyncio.gather(*queued[1:], return_exceptions=True)

    asyncio.run(scenario())
