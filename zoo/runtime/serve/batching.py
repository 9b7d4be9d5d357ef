"""Cross-request batching (`zoo serve --max-batch B --max-wait-ms T`).

Requests for one model whose loop says they may share a call (`ModelRuntime.per_row_seeds`
and equal `batch_key`s) wait on the event loop until their group holds B rows or the first
has waited T ms, then run as one `sample_batch` call in a worker thread and get their own
part back. Each row draws from its own (seed, row) stream, so an answer equals the one the
request gets alone. The group's summed cost stays within the request budget: a request that
would push it over closes the group first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from zoo.config import SampleOptionsBase
from zoo.outputs import SampleOutput
from zoo.runtime.serve.models import ServedModel

RunBatch = Callable[[ServedModel, list[SampleOptionsBase]], Awaitable[list[SampleOutput]]]


@dataclass
class Waiter:
    options: SampleOptionsBase
    done: anyio.Event = field(default_factory=anyio.Event)
    output: SampleOutput | None = None
    error: BaseException | None = None


@dataclass
class Group:
    model: ServedModel
    waiters: list[Waiter] = field(default_factory=list)
    rows: int = 0
    peak_bytes: int = 0


class Batcher:
    """Lives on the server's event loop: groups are changed there only, so no lock."""

    def __init__(self, max_rows: int, max_wait: float, budget: int, run: RunBatch) -> None:
        self.max_rows, self.max_wait, self.budget, self.run = max_rows, max_wait, budget, run
        self.groups: dict[tuple[str, str], Group] = {}

    async def sample(
        self, model: ServedModel, options: SampleOptionsBase, task_group: anyio.abc.TaskGroup
    ) -> SampleOutput:
        runtime = model.loaded.runtime
        key = runtime.batch_key(options) if runtime.per_row_seeds else None
        if key is None:
            return (await self.run(model, [options]))[0]
        rows, cost = runtime.batch_rows(options), runtime.cost(options)
        peak = cost.peak_bytes if cost is not None else 0
        group_key = (model.name, key)
        group = self.groups.get(group_key)
        if group is not None and (group.rows + rows > self.max_rows or group.peak_bytes + peak > self.budget):
            self._close(group_key, task_group)
            group = None
        if group is None:
            group = self.groups[group_key] = Group(model)
            task_group.start_soon(self._close_after_wait, group_key, group, task_group)
        waiter = Waiter(options)
        group.waiters.append(waiter)
        group.rows += rows
        group.peak_bytes += peak
        if group.rows >= self.max_rows:
            self._close(group_key, task_group)
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.output is not None
        return waiter.output

    async def _close_after_wait(
        self, group_key: tuple[str, str], group: Group, task_group: anyio.abc.TaskGroup
    ) -> None:
        await anyio.sleep(self.max_wait)
        if self.groups.get(group_key) is group:
            self._close(group_key, task_group)

    def _close(self, group_key: tuple[str, str], task_group: anyio.abc.TaskGroup) -> None:
        task_group.start_soon(self._run_group, self.groups.pop(group_key))

    async def _run_group(self, group: Group) -> None:
        try:
            outputs = await self.run(group.model, [waiter.options for waiter in group.waiters])
        except Exception as error:  # every request of the group gets the error its call raised
            for waiter in group.waiters:
                waiter.error = error
                waiter.done.set()
            return
        for waiter, output in zip(group.waiters, outputs, strict=True):
            waiter.output = output
            waiter.done.set()
