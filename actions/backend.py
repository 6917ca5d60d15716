"""Calling the registry database from an action: off the event loop, bounded in time, every
database trouble turned into one exception the action answers with the apology."""
import asyncio
from typing import Any, Callable, Tuple, Type, TypeVar

from actions.config import get_settings
from actions.registry import RegistryError

T = TypeVar("T")


class BackendFailure(Exception):
    """The registry could not answer in time."""


async def registry_call(function: Callable[..., T], *args: Any, passthrough: Tuple[Type[Exception], ...] = ()) -> T:
    """Runs a blocking registry call off the event loop, bounded by the DB timeout; the
    `passthrough` exceptions (answers, not failures) are raised as they are."""
    timeout = get_settings().db_timeout_seconds + 1
    try:
        return await asyncio.wait_for(asyncio.to_thread(function, *args), timeout)
    except passthrough:
        raise
    except (RegistryError, asyncio.TimeoutError, OSError) as error:
        raise BackendFailure(str(error)) from error
