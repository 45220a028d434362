"""What differs between asyncio and trio, found once when a hub starts.

The hub reads the clock per event and makes a wake-up per parked writer;
``anyio.current_time()`` and ``anyio.Event()`` find the backend on every call,
which costs more than the rest of a delivery, so the backend's own clock
and a cheap one-shot wake-up are looked up once here.

Writer tasks start in bursts (a batch flush can wake many retired writers).
On asyncio a writer is a plain task the hub owns, cancels and joins: a
task-group task costs several times more to start. Nothing outside cancels a
plain task, so it needs no shield. On trio a writer is a task of the hub's
nursery, shielded so that a cancelled server still drains what it accepted;
the hub ends it by cancelling that scope.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from .connection import Connection, Wakeup

__all__ = ()

logger = logging.getLogger("sessionfanout")

WriterBody = Callable[[Connection], Coroutine[Any, Any, None]]
OnError = Callable[[Connection, BaseException], None]


class _FutureWakeup(asyncio.Future[None]):
    """A one-shot wake-up on asyncio: a bare future that can ``set()``.

    An ``anyio.Event`` is three objects and about 1.5 KB per wait (its
    asyncio.Event keeps a deque of waiters); a parked writer needs neither.
    """

    __slots__ = ()

    def set(self) -> None:
        if not self.done():
            self.set_result(None)

    def wait(self) -> Awaitable[None]:
        return self


class Runtime:
    """The backend's clock, wake-ups and writer tasks (anyio's portable way)."""

    def __init__(self, task_group: anyio.abc.TaskGroup, on_error: OnError) -> None:
        self.clock: Callable[[], float] = anyio.current_time
        self.new_wakeup: Callable[[], Wakeup] = type(anyio.Event())
        if "trio" in sys.modules:  # anyio's other backend (subclasses are asyncio's)
            import trio

            self.clock = trio.current_time
        self._task_group = task_group
        self._on_error = on_error

    @staticmethod
    def current(task_group: anyio.abc.TaskGroup, on_error: OnError) -> Runtime:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return Runtime(task_group, on_error)
        return AsyncioRuntime(task_group, on_error)

    def start_writer(self, body: WriterBody, connection: Connection) -> None:
        self._task_group.start_soon(self._shielded, body, connection)

    async def _shielded(self, body: WriterBody, connection: Connection) -> None:
        try:
            with anyio.CancelScope(shield=True) as scope:
                connection.task = scope
                await body(connection)
        except Exception as exc:  # a bug: this connection's, never the task group's
            self._on_error(connection, exc)
        finally:
            connection.task = None

    async def join_writers(self) -> None:
        """Wait for writers ended by ``Hub`` (nursery tasks: the nursery joins them)."""


class AsyncioRuntime(Runtime):
    def __init__(self, task_group: anyio.abc.TaskGroup, on_error: OnError) -> None:
        super().__init__(task_group, on_error)
        self._loop = loop = asyncio.get_running_loop()
        self.clock = loop.time
        if type(loop).time is asyncio.BaseEventLoop.time:
            self.clock = time.monotonic  # what loop.time() returns, one call less
        self.new_wakeup = functools.partial(_FutureWakeup, loop=loop)
        self._tasks: dict[asyncio.Task[None], Connection] = {}
        # Bound once: a bound method per task is 128 B more per parked writer.
        self._on_done = self._done

    def start_writer(self, body: WriterBody, connection: Connection) -> None:
        task = self._loop.create_task(body(connection))
        connection.task = task
        self._tasks[task] = connection
        task.add_done_callback(self._on_done)

    def _done(self, task: asyncio.Task[None]) -> None:
        connection = self._tasks.pop(task)
        if connection.task is task:
            connection.task = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._on_error(connection, exc)

    async def join_writers(self) -> None:
        if self._tasks:  # the hub cancelled them (forgot their connections): they end at once
            await asyncio.wait(list(self._tasks))
