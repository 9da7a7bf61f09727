"""Measurements across processes: which checkpoints each rank measures, and how the measurements reach every rank.

A run dir's checkpoints are dealt out round-robin (rank r measures targets r, r+N, ...), each rank on its
own device, and every rank receives every measurement (so all ranks reach the same verdict and exit code).
Who this process is (rank, world size, barrier) is :mod:`drift_suite.common.process`; its names are importable from
here too.

Measurements travel as safetensors bytes (arrays) plus JSON (answers, timings) over a gloo all-gather of
uint8 tensors: no pickles.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

# Re-exported: README and users import process identity from here as well.
from ..common.process import (  # noqa: F401
    DistributedError,
    ProcessContext,
    _one_line,
    all_gather_bytes,
    barrier,
    is_main_process,
    my_share,
    on_main_then_share,
    process_context,
    raise_first_error,
)

if TYPE_CHECKING:
    from .conversations import Design
    from .measurement import Measurement
    from .personas import PersonaSet

T = TypeVar("T")

__all__ = [
    "DistributedError", "ProcessContext", "all_gather_bytes", "barrier", "is_main_process", "measure_across_processes",
    "my_share", "on_main_then_share", "pack", "process_context", "raise_first_error", "share_work", "unpack",
]


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
    from .measurement import Measurement

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
