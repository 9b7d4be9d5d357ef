"""Cross-request batching (`zoo serve --max-batch B --max-wait-ms T`).

Requests for one model whose loop says they may share a call (`ModelRuntime.per_row_seeds`
and equal `batch_key`s) join one open group; each row draws from its own (seed, row)
stream, so an answer equals the one the request gets alone. A group runs once a worker is
free and one of these holds:

- it holds B rows (it closes: later requests start another group);
- no other request is on its way in (reading its body or being parsed: `arrival`), so
  waiting could only delay it — a lone request runs at once, as it would unbatched;
- its first request has waited T ms for others.

While every worker is busy, a group stays open and keeps filling: that wait costs nothing,
the request would wait for a worker anyway. The group's summed cost stays within the
request budget: a request that would push it over closes the group first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import anyio
import anyio.to_thread

from zoo.config import SampleOptionsBase
from zoo.runtime.loop import SamplingTimeout
from zoo.runtime.serve.models import ServedModel

ResultT = TypeVar("ResultT")
# In a worker thread: one result per request, in order
Run = Callable[[ServedModel, list[SampleOptionsBase]], list[ResultT]]


@dataclass
class Waiter(Generic[ResultT]):
    options: SampleOptionsBase
    done: anyio.Event = field(default_factory=anyio.Event)
    result: ResultT | None = None
    error: BaseException | None = None


@dataclass(eq=False)  # hashed by identity: the limiter lends the group a worker
class Group(Generic[ResultT]):
    model: ServedModel
    key: tuple[str, str]  # (model name, batch key)
    waiters: list[Waiter[ResultT]] = field(default_factory=list)
    rows: int = 0
    peak_bytes: int = 0
    ready: anyio.Event = field(default_factory=anyio.Event)  # set: waits for no one, runs when a worker is free


class Batcher(Generic[ResultT]):
    """Lives on the server's event loop: groups and counts change there only, so no lock.

    `workers` is the server's limiter of sampling threads, `tasks` the task group that runs
    the groups, `run` the synchronous call that samples a list of requests (max_rows 0:
    every request runs alone)."""

    def __init__(
        self,
        max_rows: int,
        max_wait: float,
        budget: int,
        workers: anyio.CapacityLimiter,
        tasks: anyio.abc.TaskGroup,
        run: Run[ResultT],
    ) -> None:
        self.max_rows, self.max_wait, self.budget = max_rows, max_wait, budget
        self.workers, self.tasks, self.run = workers, tasks, run
        self.groups: dict[tuple[str, str], Group[ResultT]] = {}  # the open ones
        self.arriving = 0  # requests admitted but not yet at `sample`: those a group may wait for

    @contextmanager
    def arrival(self) -> Iterator[None]:
        """Around a request's reading and parsing: while any request is on its way in, an
        open group may wait for it (up to max_wait); once none is, every group is ready."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            if self.arriving == 0:
                for group in self.groups.values():
                    group.ready.set()

    async def sample(self, model: ServedModel, options: SampleOptionsBase) -> ResultT:
        runtime = model.loaded.runtime
        key = runtime.batch_key(options) if self.max_rows > 0 and runtime.per_row_seeds else None
        if key is None:
            return (await anyio.to_thread.run_sync(self.run, model, [options], limiter=self.workers))[0]
        rows, cost = runtime.batch_rows(options), runtime.cost(options)
        peak = cost.peak_bytes if cost is not None else 0
        group = self.groups.get((model.name, key))
        if group is not None and (group.rows + rows > self.max_rows or group.peak_bytes + peak > self.budget):
            self._close(group)
            group = None
        if group is None:
            group = self.groups[(model.name, key)] = Group(model, (model.name, key))
            self.tasks.start_soon(self._run_group, group)
        waiter: Waiter[ResultT] = Waiter(options)
        group.waiters.append(waiter)
        group.rows += rows
        group.peak_bytes += peak
        if group.rows >= self.max_rows:
            self._close(group)
        elif self.arriving == 0:
            group.ready.set()
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return cast(ResultT, waiter.result)  # set before done, when error is not

    def _close(self, group: Group[ResultT]) -> None:
        """No request joins `group` any more; it runs as soon as a worker is free."""
        if self.groups.get(group.key) is group:
            del self.groups[group.key]
        group.ready.set()

    async def _run_group(self, group: Group[ResultT]) -> None:
        with anyio.move_on_after(self.max_wait):
            await group.ready.wait()
        # The worker is taken here, not by the thread call, so that the group fills while it waits.
        await self.workers.acquire_on_behalf_of(group)
        self._close(group)
        try:
            await self._run(group.model, group.waiters)
        finally:
            self.workers.release_on_behalf_of(group)

    async def _run(self, model: ServedModel, waiters: list[Waiter[ResultT]]) -> None:
        """One call for all; if it fails, one call each (in the same worker), so that a request
        whose input the loop refuses (an unreadable image) fails alone. A call stopped at its
        deadline or by shutdown fails them all: run again, each would take as long or stop too."""
        try:
            results = await anyio.to_thread.run_sync(self.run, model, [waiter.options for waiter in waiters])
        except Exception as error:
            if len(waiters) > 1 and not isinstance(error, SamplingTimeout):
                for waiter in waiters:
                    await self._run(model, [waiter])
                return
            for waiter in waiters:
                waiter.error = error
                waiter.done.set()
            return
        for waiter, result in zip(waiters, results, strict=True):
            waiter.result = result
            waiter.done.set()
