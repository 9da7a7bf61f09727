"""Who this process is in a multi-process launch, and how ranks wait for and hear from each other.

Under ``torchrun`` or ``accelerate launch`` every process gets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.
Only the main process prints and writes files; the others wait at a :func:`barrier` or take the main
process's result (:func:`on_main_then_share`). Nothing here knows what is measured: placement, the CLI, the
plugin and the training callbacks use it, and :mod:`drift_suite.measure.distributed` gathers measurements over it.

Ranks talk over a gloo group of uint8 tensors (no pickles; gloo works on CPU tensors whether or not the job
also uses NCCL).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import DriftSuiteError

T = TypeVar("T")


class DistributedError(DriftSuiteError):
    """Another rank failed; its one-line message, so every rank stops with the same error."""


@dataclass(frozen=True)
class ProcessContext:
    """This process's place in a multi-process launch (``world_size`` 1 when launched alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def process_context() -> ProcessContext:
    """The launch as ``torchrun`` / ``accelerate launch`` describe it in the environment."""
    return ProcessContext(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch."""
    return process_context().is_main


_GLOO_GROUP: Any = None


def _gloo_group() -> Any:
    """A gloo process group over all ranks (the default one, or a gloo twin of an NCCL default)."""
    import torch.distributed as dist

    global _GLOO_GROUP
    if not dist.is_initialized():
        # env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, which both launchers set.
        dist.init_process_group(backend="gloo")
    if _GLOO_GROUP is None:
        _GLOO_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _GLOO_GROUP


def all_gather_bytes(payload: bytes) -> list[bytes]:
    """Every rank's ``payload``, in rank order, on every rank (a single process gets ``[payload]``)."""
    if not process_context().distributed:
        return [payload]
    import torch
    import torch.distributed as dist

    group = _gloo_group()
    world = dist.get_world_size(group)
    size = torch.tensor([len(payload)], dtype=torch.int64)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    longest = max(int(s) for s in sizes)
    buffer = torch.zeros(longest, dtype=torch.uint8)
    if payload:
        buffer[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    buffers = [torch.empty(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(buffers, buffer, group=group)
    return [bytes(b[: int(n)].numpy().tobytes()) for b, n in zip(buffers, sizes)]


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if process_context().distributed:
        import torch.distributed as dist

        dist.barrier(group=_gloo_group())


def raise_first_error(errors: Sequence[str], error_type: type[DriftSuiteError] = DistributedError) -> None:
    """Raise the lowest rank's error on every rank, so no rank waits for one that has given up.

    ``error_type`` keeps the kind (and so the exit code) of the error the ranks met, e.g. a failing reward."""
    for rank, error in enumerate(errors):
        if error:
            raise error_type(error if rank == process_context().rank else f"rank {rank}: {error}")


def on_main_then_share(work: Callable[[], T], after: Callable[[], T]) -> T:
    """Run ``work`` on the main process; the others run ``after`` once it has finished.

    An error on the main process is raised on every rank (with its message), never left as a hang.
    """
    context = process_context()
    if not context.distributed:
        return work()
    result: Any = None
    failure: Exception | None = None
    if context.is_main:
        try:
            result = work()
        except Exception as exc:  # shared before raising: the other ranks are waiting for word
            failure = exc
    errors = [e.decode() for e in all_gather_bytes(_one_line(failure).encode())]
    if failure is not None:
        raise failure
    raise_first_error(errors)
    return result if context.is_main else after()


def _one_line(failure: Exception | None) -> str:
    if failure is None:
        return ""
    return (str(failure).splitlines() or [""])[0] or type(failure).__name__


def my_share(items: Sequence[T], context: ProcessContext | None = None) -> list[tuple[int, T]]:
    """``(index, item)`` for the items this rank handles: indices rank, rank+N, ..."""
    context = context or process_context()
    return [(i, item) for i, item in enumerate(items) if i % context.world_size == context.rank]
