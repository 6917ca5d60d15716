"""Messages are handled in the order they arrive, a few at a time.

The Rasa server handles every message on one event loop. Left alone, each new message
starts at once and takes turns on the CPU with every message already in progress, so
under load a message that needs several steps (a terminal lookup calls the action
server once or twice) waits behind every message that arrived after it, once per step.
Under load that made the slowest answers far slower than the median (bench/HISTORY.md).

Here at most SLOTS messages are in progress at once; the others wait in arrival order,
and a finished message hands its slot straight to the one that has waited longest.
While one message waits for the action server another uses the CPU, so as many
messages are answered per second as before, and each waits about as long as the
others: the slowest answers come sooner, the quickest a little later.

No message waits longer than MAX_WAIT_S for a slot: if the messages in progress hang (an
action server that does not answer), the others go ahead anyway, as they would without
this. At most MAX_WAITING messages wait; one more goes ahead at once, so a flood from many
clients cannot grow the queue. Messages from the same sender are still handled one at a time by Rasa's lock store,
which is taken first, so a sender's second message does not hold a slot while it waits.
"""
import asyncio
import collections
import contextlib
import functools
import weakref
from typing import Any, Awaitable, Callable, Deque, Optional, TypeVar

SLOTS = 3
MAX_WAIT_S = 1.0
MAX_WAITING = 1000

T = TypeVar("T")


class FifoSlots:
    """A semaphore whose waiters get the freed slot in arrival order; nobody barges in."""

    def __init__(self, size: int, max_waiting: int = MAX_WAITING) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.free = size
        self.max_waiting = max_waiting
        self._waiters: Deque[asyncio.Future] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def acquire(self, timeout: float) -> bool:
        """True once a slot is held (release it), False if none came within `timeout` s
        or the queue is full."""
        if self.free > 0:  # free slots mean nobody is waiting: release hands them on
            self.free -= 1
            return True
        if len(self._waiters) >= self.max_waiting:
            return False
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout, _settle, waiter, False)
        try:
            return await waiter
        except asyncio.CancelledError:
            if _handed_a_slot(waiter):
                self.release()  # handed a slot just as the caller was cancelled
            raise
        finally:
            timer.cancel()
            if not _handed_a_slot(waiter):
                # Timed out or cancelled: not left in the queue (behind a hung action server
                # every message times out, and the queue would grow until a slot came free).
                with contextlib.suppress(ValueError):  # a release may have dropped it already
                    self._waiters.remove(waiter)

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # the slot passes on; `free` is unchanged
                return
        self.free += 1


def _handed_a_slot(waiter: asyncio.Future) -> bool:
    return waiter.done() and not waiter.cancelled() and waiter.result()


def _settle(waiter: asyncio.Future, value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


_slots: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FifoSlots]" = weakref.WeakKeyDictionary()


def slots_for_loop(size: int = SLOTS) -> FifoSlots:
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = FifoSlots(size)
    return slots


def admitted(
    handle: Callable[..., Awaitable[T]], slots: Optional[Callable[[], FifoSlots]] = None
) -> Callable[..., Awaitable[T]]:
    """`handle` run in a slot, or after MAX_WAIT_S without one."""
    get_slots = slots or slots_for_loop

    @functools.wraps(handle)
    async def run(*args: Any, **kwargs: Any) -> T:
        pool = get_slots()
        held = await pool.acquire(MAX_WAIT_S)
        try:
            return await handle(*args, **kwargs)
        finally:
            if held:
                pool.release()

    return run
