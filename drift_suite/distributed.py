"""Several processes, one job: who is the main process, which checkpoints each rank measures, and how the
measurements reach every rank.

Under ``torchrun`` or ``accelerate launch`` every process gets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.
A run dir's checkpoints are dealt out round-robin (rank r measures targets r, r+N, ...), each rank on its
own device, and every rank receives every measurement (so all ranks reach the same verdict and exit code);
only the main process prints and writes files.

Measurements travel as safetensors bytes (arrays) plus JSON (answers, timings) over a gloo all-gather of
uint8 tensors: no pickles, and gloo works on CPU tensors whether or not the job also uses NCCL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .errors import DriftSuiteError

if TYPE_CHECKING:
    import torch

    from .conversations import Design
    from .measure import Measurement
    from .personas import PersonaSet

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


def raise_first_error(errors: Sequence[str]) -> None:
    """Raise the lowest rank's error on every rank, so no rank waits for one that has given up."""
    for rank, error in enumerate(errors):
        if error:
            raise DistributedError(error if rank == process_context().rank else f"rank {rank}: {error}")


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


# ------------------------------------------------------------------------------------------ payloads


def pack(arrays: dict[str, np.ndarray], fields: dict[str, Any]) -> bytes:
    """Arrays (safetensors) and JSON-able fields as one byte string."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata={"fields": json.dumps(fields)})


def unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The inverse of :func:`pack`."""
    from safetensors.numpy import load

    header_len = int.from_bytes(data[:8], "little")
    fields = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["fields"])
    return load(data), fields


def share_work(items: Sequence[T], work: Callable[[T], bytes]) -> list[bytes]:
    """Run ``work`` on this rank's share of ``items``; every rank gets all results in ``items`` order.

    ``work`` returns a payload (see :func:`pack`; no ``"error"`` field, which marks a failure). A failure
    on any rank is shared in the gathers and raised on every rank (the original exception on its own rank),
    so no rank waits forever for another.
    """
    context = process_context()
    if not context.distributed:
        return [work(item) for item in items]
    mine: dict[int, bytes] = {}
    failure: Exception | None = None
    for index, item in my_share(items, context):
        try:
            mine[index] = work(item)
        except Exception as exc:  # shared before raising: the other ranks are waiting for this one
            failure = exc
            break
    error = _one_line(failure)
    # One gather per round keeps payloads to one measurement per rank at a time.
    rounds = -(-len(items) // context.world_size)
    results: dict[int, bytes] = {}
    errors = [""] * context.world_size
    for round_index in range(rounds):
        index = round_index * context.world_size + context.rank
        payload = pack({}, {"error": error}) if error else mine.get(index, b"")
        for rank, data in enumerate(all_gather_bytes(payload)):
            if not data:
                continue
            _arrays, fields = unpack(data)
            if "error" in fields:
                errors[rank] = errors[rank] or fields["error"]
                continue
            results[round_index * context.world_size + rank] = data
    if failure is not None:
        raise failure
    raise_first_error(errors)
    return [results[i] for i in range(len(items))]


# ------------------------------------------------------------------------------------------ measurements


def measure_across_processes(
    targets: Sequence[tuple[int | None, str]],
    load_and_measure: Callable[[str], tuple[Measurement, dict[str, float]]],
    persona_set: PersonaSet,
    design: Design,
) -> list[tuple[Measurement, dict[str, float]]]:
    """``load_and_measure(path)`` for every target, each rank measuring its share; every rank gets all.

    The conversations are rebuilt from ``persona_set`` and ``design`` (deterministic) instead of sent.
    """
    from .conversations import build_conversations
    from .measure import Measurement

    def work(target: tuple[int | None, str]) -> bytes:
        measurement, timings = load_and_measure(target[1])
        arrays = {"means": measurement.means, "token_counts": measurement.token_counts}
        fields = {
            "responses": measurement.responses,
            "model_info": measurement.model_info,
            "weights_digest": measurement.weights_digest,
            "measurement_timings": measurement.timings,
            "from_cache": measurement.from_cache,
            "decoder": measurement.decoder,
            "timings": timings,
            "rank": process_context().rank,
        }
        return pack(arrays, fields)

    conversations = build_conversations(persona_set, design)
    labels = np.array([c.role for c in conversations])
    results = []
    for data in share_work(targets, work):
        arrays, fields = unpack(data)
        measurement = Measurement(
            roles=persona_set.role_names,
            labels=labels,
            means=arrays["means"],
            token_counts=arrays["token_counts"],
            responses=fields["responses"],
            conversations=conversations,
            model_info=fields["model_info"],
            weights_digest=fields["weights_digest"],
            timings=fields["measurement_timings"],
            from_cache=fields["from_cache"],
            decoder=fields["decoder"],
        )
        results.append((measurement, {f"{k} (rank {fields['rank']})": v for k, v in fields["timings"].items()}))
    return results
