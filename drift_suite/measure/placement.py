"""Where the model runs and in what precision: the one place that decides device and dtype.

``resolve_placement(device, dtype, device_map)`` turns the user's options (``--device``, ``--dtype``,
``--device-map`` or ``[tool.drift_suite]``) into a :class:`Placement`; loading, measuring, training and the
reports all read it from there. Defaults: the GPU where there is one, in bfloat16 where that GPU supports
it; float32 on the CPU and on GPUs without bfloat16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..common.errors import DriftSuiteError
from ..common.process import process_context

if TYPE_CHECKING:  # torch loads lazily: the plugin and the CLI read OPTION_HELP at start-up
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAP_CHOICES = ("auto",)
OPTION_HELP = {
    "device": "where to measure: auto (default: the GPU where there is one), cpu, cuda or cuda:N",
    "dtype": "precision: auto (default: bfloat16 on a GPU that supports it, else float32), float32, bfloat16 or "
             "float16; a baseline measured in another dtype is refused (docs/precision.md)",
    "device_map": "'auto' shards a model too large for one GPU over all visible GPUs",
}
"""Help of ``--device``/``--dtype``/``--device-map``, shared by the pytest plugin and the CLI."""
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


@dataclass(frozen=True)
class Placement:
    """A resolved device and dtype (plus ``device_map="auto"`` for a model sharded over several GPUs)."""

    device: str
    """``"cpu"`` or ``"cuda:N"``; with ``device_map`` the device of the model's input embedding."""
    dtype: str
    """``"float32"``, ``"bfloat16"`` or ``"float16"``."""
    device_map: str | None = None
    gpu_name: str | None = None

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def torch_dtype(self) -> "torch.dtype":
        import torch

        return getattr(torch, self.dtype)

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` arguments: only ``device_map`` (the dtype is passed on its own)."""
        return {"device_map": self.device_map} if self.device_map else {}

    def describe(self) -> str:
        """``"cuda:0 (NVIDIA H200), bfloat16"``: one phrase for summaries and reports."""
        where = self.device + (f" ({self.gpu_name})" if self.gpu_name else "")
        if self.device_map:
            where += f", device_map={self.device_map}"
        return f"{where}, {self.dtype}"


def _resolve_device(device: str, cuda_available: bool, cuda_count: int, local_rank: int = 0) -> str:
    import torch

    spec = (device or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if cuda_available else "cpu"
    if spec == "cuda":
        # Under torchrun / accelerate launch each process measures on its own GPU.
        spec = f"cuda:{local_rank}"
    if spec == "cpu":
        return "cpu"
    if _CUDA_INDEX.match(spec):
        if not cuda_available:
            raise DriftSuiteError(f"--device {device}: no CUDA GPU is available here (torch {torch.__version__}); pass --device cpu or auto")
        index = int(spec.split(":")[1])
        if index >= cuda_count:
            raise DriftSuiteError(f"--device {device}: this machine has {cuda_count} CUDA device(s), cuda:0..cuda:{cuda_count - 1}")
        return f"cuda:{index}"
    raise DriftSuiteError(f"--device: expected one of {', '.join(DEVICE_CHOICES)}; got {device!r}")


def _resolve_dtype(dtype: str, device: str, bf16_supported: bool) -> str:
    spec = (dtype or "auto").strip().lower().removeprefix("torch.")
    spec = _DTYPE_ALIASES.get(spec, spec)
    if spec == "auto":
        # bfloat16 keeps float32's range; float16 is never chosen for the user because some residual
        # streams (Gemma's) overflow its 65504 maximum, so GPUs without bfloat16 measure in float32.
        return "bfloat16" if device.startswith("cuda") and bf16_supported else "float32"
    if spec not in DTYPE_CHOICES:
        raise DriftSuiteError(f"--dtype: expected one of {', '.join(DTYPE_CHOICES)}; got {dtype!r}")
    if spec == "bfloat16" and device.startswith("cuda") and not bf16_supported:
        raise DriftSuiteError(f"--dtype bfloat16: {device} does not support bfloat16; pass --dtype float32 (or float16)")
    return spec


def resolve_placement(
    device: str | None = "auto",
    dtype: str | None = "auto",
    device_map: str | None = None,
    cuda_available: bool | None = None,
) -> Placement:
    """The :class:`Placement` for the user's options; every bad value is a one-line :class:`DriftSuiteError`.

    ``cuda_available`` overrides detection (tests); a GPU's name and bfloat16 support are then read only
    when torch itself sees CUDA.
    """
    import torch

    real_cuda = torch.cuda.is_available()
    has_cuda = real_cuda if cuda_available is None else cuda_available
    count = torch.cuda.device_count() if real_cuda else (1 if has_cuda else 0)
    map_spec = None if device_map in (None, "", "none", "None") else str(device_map).strip().lower()
    if map_spec is not None and map_spec not in DEVICE_MAP_CHOICES:
        raise DriftSuiteError(f"--device-map: expected 'auto' (shard the model over the visible GPUs); got {device_map!r}")
    if map_spec is not None and not has_cuda:
        raise DriftSuiteError("--device-map auto: shards a model over CUDA GPUs, and none is available here; leave it out")
    resolved_device = _resolve_device(device or "auto", has_cuda, count, process_context().local_rank)
    if map_spec is not None and resolved_device == "cpu":
        raise DriftSuiteError("--device-map auto places the model on the GPUs; it cannot be combined with --device cpu")
    on_real_gpu = resolved_device.startswith("cuda") and real_cuda
    bf16_supported = torch.cuda.is_bf16_supported() if on_real_gpu else True
    resolved_dtype = _resolve_dtype(dtype or "auto", resolved_device, bf16_supported)
    gpu_name = torch.cuda.get_device_name(int(resolved_device.split(":")[1])) if on_real_gpu else None
    return Placement(resolved_device, resolved_dtype, map_spec, gpu_name)


def model_device(model: "torch.nn.Module") -> "torch.device":
    """Where a model's inputs go: its input embedding's device (the first shard under ``device_map``)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose kernels and code shape the activations."""
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:  # peft is a dependency, but a measurement does not need it
        pass
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return versions
