"""Single-flight: at most one computation in flight per key, shared by every caller that asks for it.

64 readers opening the same cold video must cause exactly one download. The work runs in a service
nursery owned by the daemon, not in the first caller's task, so a caller that is interrupted (the
kernel cancels a read) stops waiting without cancelling the fetch the other callers share.

Its invariants: docs/design.md, "Single-flight and cancellation".
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

from vfs.errors import VfsError

T = TypeVar("T")


class ShuttingDown(VfsError):
    """The daemon is stopping: the work a reader waited for was cancelled, or can no longer start (EIO)."""

    errno = errno.EIO
    log_level = logging.INFO


class _Flight(Generic[T]):
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._flights: dict[Hashable, _Flight[T]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight()
            try:
                self._nursery.start_soon(self._work, key, flight, work)
            except RuntimeError:  # the nursery is closed: the daemon is shutting down
                raise ShuttingDown("the filesystem is shutting down") from None
            self._flights[key] = flight
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.result  # type: ignore[return-value]

    def start(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> bool:
        """Start the work for ``key`` unless it is in flight already, and do not wait for it (read-ahead).
        Its result is handed to whoever joins the flight meanwhile; a failure is dropped with it."""
        if key in self._flights:
            return False
        flight: _Flight[T] = _Flight()
        try:
            self._nursery.start_soon(self._work, key, flight, work)
        except RuntimeError:  # the nursery is closed: the daemon is shutting down
            return False
        self._flights[key] = flight
        return True

    async def _work(self, key: Hashable, flight: _Flight[T], work: Callable[[], Awaitable[T]]) -> None:
        try:
            flight.result = await work()
        except Exception as exc:  # handed to every waiter; the error boundary logs it once per reader
            flight.error = exc
        except BaseException:  # trio.Cancelled, alone or grouped by a nested nursery: the daemon is stopping
            flight.error = ShuttingDown("the filesystem is shutting down")
            raise
        finally:
            del self._flights[key]
            flight.done.set()
