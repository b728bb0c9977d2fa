"""Scale-out through accelerate: split a list of work items across the processes of ``accelerate launch`` (or
``torchrun``) and gather the results, in the original order, on every process.

Single-process (no launcher) every operation is a no-op, and accelerate's process state is not even created.
Work items are split into contiguous blocks in process order (``PartialState.split_between_processes``), so the
concatenation that ``accelerate.utils.gather_object`` returns is the original order. Callers that batch their work
split *batches*, not samples, so that each batch holds exactly the samples it holds in a single-process run (left
padding, hence numerics, then match the single-process run).

    work = DistributedWork.from_environment()
    answers = work.map_batches(lambda lo, hi: vlm.generate(images[lo:hi], prompts[lo:hi]), len(prompts), 16)
    if work.is_main_process:
        write_results(answers)
    work.wait_for_everyone()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Set by accelerate launch, torchrun and torch.distributed.run alike.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE",)


def launched_distributed() -> bool:
    """True when this process is one of several started by ``accelerate launch`` / ``torchrun``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return any(int(os.environ.get(name, "1") or "1") > 1 for name in _WORLD_SIZE_VARIABLES)


@dataclass(frozen=True)
class DistributedWork:
    """Which process this is among how many; splits work lists and gathers their results.

    Build it with :meth:`from_environment` (or :meth:`single` to force a single process). ``state`` is
    accelerate's ``PartialState`` when launched with several processes, else ``None``.
    """

    num_processes: int = 1
    process_index: int = 0
    state: Any = None

    @classmethod
    def single(cls) -> DistributedWork:
        return cls()

    @classmethod
    def from_environment(cls) -> DistributedWork:
        """The processes of the current launch: accelerate's ``PartialState`` (which initialises the process group,
        gloo on CPU, nccl on GPUs) if launched with several processes, else a single process."""
        if not launched_distributed():
            return cls()
        import torch
        from accelerate import PartialState

        # accelerate picks gloo only when told it runs on CPU (``accelerate launch --cpu`` sets that; torchrun
        # does not): without an accelerator there is nothing else to run on.
        state = PartialState(cpu=not torch.accelerator.is_available())
        return cls(num_processes=state.num_processes, process_index=state.process_index, state=state)

    @property
    def is_distributed(self) -> bool:
        return self.num_processes > 1

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def local_items(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous block of ``items`` (all of them in a single process; possibly empty)."""
        if not self.is_distributed:
            return list(items)
        with self.state.split_between_processes(list(items)) as local:
            return list(local)

    def gather(self, local_results: Sequence[R]) -> list[R]:
        """Every process's ``local_results`` concatenated in process order, on every process."""
        if not self.is_distributed:
            return list(local_results)
        from accelerate.utils import gather_object

        return list(gather_object(list(local_results)))

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(item) for item in items]`` with the items split across processes; the full list on every one."""
        return self.gather([fn(item) for item in self.local_items(items)])

    def map_batches(self, fn: Callable[[int, int], Sequence[R]], n: int, batch_size: int) -> list[R]:
        """Run ``fn(lo, hi)`` (which returns one result per sample of ``lo:hi``) over the batches
        ``[0, b), [b, 2b), ...`` of ``n`` samples, the batches split across processes; returns the ``n`` results
        in order on every process. Each process makes one call over its whole block: its boundaries are multiples
        of ``batch_size``, so a callee that batches by ``batch_size`` itself sees the single-process batches."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = self.local_items(list(range(0, n, batch_size)))
        local: list[R] = []
        if starts:
            lo, hi = starts[0], min(starts[-1] + batch_size, n)
            local = list(fn(lo, hi))
            if len(local) != hi - lo:
                raise ValueError(f"map_batches: fn({lo}, {hi}) returned {len(local)} results for {hi - lo} samples")
        return self.gather(local)

    def wait_for_everyone(self) -> None:
        """A barrier (no-op in a single process): e.g. after the main process has written the results."""
        if self.is_distributed:
            self.state.wait_for_everyone()


__all__ = ["DistributedWork", "launched_distributed"]
