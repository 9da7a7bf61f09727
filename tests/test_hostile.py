"""Hostile files: pickles in checkpoints are never unpickled, a checkpoint's own Python never runs unless asked,
and persona files cannot name paths outside their set."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest

import drift_suite.measure.models as models
from drift_suite.gate.config import DriftConfig, Thresholds
from drift_suite.measure.conversations import Design
from drift_suite.common.errors import CheckpointError, PersonaSetError
from drift_suite.measure.extract import GenerationSettings
from drift_suite.measure.personas import PersonaSet, load_persona_dir
from drift_suite.gate.runner import DriftCheck, read_reward_log, trajectory

TRL_PICKLES = ("optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth", "pytorch_model.bin")
CONFIG = DriftConfig(
    thresholds=Thresholds(k_sigma=3.0, min_projection_frac=0.3),
    layers=(1, 2),
    design=Design(default_questions=3, role_prompts=1, role_questions=2),
    generation=GenerationSettings(max_new_tokens=4),
    n_boot=10,
)


class Canary:
    """Unpickling this creates ``path``: the proof that a file was unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant_pickles(folder: Path, canary: Path, names: tuple[str, ...] = TRL_PICKLES) -> list[Path]:
    planted = []
    for name in names:
        (folder / name).write_bytes(pickle.dumps(Canary(canary)))
        planted.append(folder / name)
    return planted


class FileWatch:
    """Records every open of the watched paths (a Python audit hook sees torch.load, safetensors and open())."""

    installed = False
    watched: set[str] = set()
    opened: list[str] = []

    @classmethod
    def start(cls, paths: list[Path]) -> None:
        if not cls.installed:  # audit hooks cannot be removed: install one, switch what it watches
            sys.addaudithook(cls._hook)
            cls.installed = True
        cls.watched = {str(p.resolve()) for p in paths}
        cls.opened = []

    @classmethod
    def stop(cls) -> list[str]:
        cls.watched = set()
        return cls.opened

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if event == "open" and cls.watched and isinstance(args[0], (str, Path)):
            try:
                path = str(Path(args[0]).resolve())
            except (OSError, ValueError):
                return
            if path in cls.watched:
                cls.opened.append(path)


def test_the_canary_works(tmp_path):
    canary = tmp_path / "canary"
    (planted,) = plant_pickles(tmp_path, canary, ("optimizer.pt",))
    pickle.loads(planted.read_bytes())
    assert canary.exists(), "the planted pickle must write its canary when unpickled, or the tests below prove nothing"


def tiny_adapter(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    loaded = models.load_model(base)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out, safe_serialization=True)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    return out


def test_pickles_in_checkpoints_adapters_and_runs_are_never_opened(tiny_checkpoint, tiny_personas, tmp_path):
    canary = tmp_path / "canary"
    base = shutil.copytree(tiny_checkpoint, tmp_path / "base")
    adapter = tiny_adapter(base, tmp_path / "adapter")
    run = tmp_path / "run"
    for step in (2, 4):
        shutil.copytree(base, run / f"checkpoint-{step}")
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"log_history": [{"step": step - 1, "reward": 0.1 * step}, {"step": step, "reward": 0.2 * step}]})
        )
    (run / "run_manifest.json").write_text(json.dumps({"model": str(base)}))
    planted = plant_pickles(base, canary) + plant_pickles(adapter, canary, TRL_PICKLES + ("adapter_model.bin",))
    for step in (2, 4):
        planted += plant_pickles(run / f"checkpoint-{step}", canary)
    planted += plant_pickles(run, canary, ("training_args.bin",))

    FileWatch.start(planted)
    try:
        common = dict(persona_set=tiny_personas, config=CONFIG, cache_dir=tmp_path / "cache", progress=False)
        DriftCheck(run, tmp_path / "baseline", update_baseline=True, **common).run()
        for target in (adapter, run):  # the update loaded base itself
            outcome = DriftCheck(target, tmp_path / "baseline", **common).run()
        rewards = read_reward_log(run)
        trajectory(outcome, 1)
    finally:
        opened = FileWatch.stop()
    assert [r.step for r in outcome.steps] == [2, 4] and rewards == {3: 0.4, 4: 0.8}, "the run was really checked"
    assert opened == [], f"pickle files were opened: {opened}"
    assert not canary.exists()


def test_pickle_only_weights_are_refused_not_loaded(tiny_checkpoint, tmp_path):
    canary = tmp_path / "canary"
    model_dir = shutil.copytree(tiny_checkpoint, tmp_path / "bin-only")
    (model_dir / "model.safetensors").unlink()
    plant_pickles(model_dir, canary, ("pytorch_model.bin",))
    with pytest.raises(CheckpointError) as refused:
        models.load_model(model_dir)
    assert "only safetensors weights are read" in str(refused.value) and "pytorch_model.bin" in str(refused.value)

    adapter = tiny_adapter(tiny_checkpoint, tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    plant_pickles(adapter, canary, ("adapter_model.bin",))
    with pytest.raises(CheckpointError, match="only safetensors weights are read.*adapter_model.bin"):
        models.load_model(adapter)
    with pytest.raises(CheckpointError, match="only safetensors"):
        DriftCheck(adapter, tmp_path / "baseline", update_baseline=True, cache_dir=None).validate()
    assert not canary.exists()


REMOTE_CODE = """
from pathlib import Path
Path({canary!r}).write_text("remote code ran")
from transformers import LlamaConfig, LlamaForCausalLM

class EvilConfig(LlamaConfig):
    model_type = "evil_llama"

class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


def test_a_checkpoints_own_code_never_runs_by_default(tiny_checkpoint, tmp_path):
    canary = tmp_path / "canary"
    model_dir = shutil.copytree(tiny_checkpoint, tmp_path / "remote-code")
    (model_dir / "evil.py").write_text(REMOTE_CODE.format(canary=str(canary)))
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="evil_llama", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"})
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as refused:
        models.load_model(model_dir)
    message = str(refused.value)
    assert "\n" not in message and "--trust-remote-code" in message
    with pytest.raises(CheckpointError):
        models.read_model_shape(model_dir)
    with pytest.raises(CheckpointError, match="--trust-remote-code"):
        DriftCheck(model_dir, tmp_path / "baseline", update_baseline=True, cache_dir=None, progress=False).run()
    assert not canary.exists()


def test_a_tokenizers_own_code_never_runs_by_default(tiny_checkpoint, tmp_path):
    canary = tmp_path / "canary"
    model_dir = shutil.copytree(tiny_checkpoint, tmp_path / "remote-tokenizer")
    (model_dir / "evil_tok.py").write_text(
        f"open({str(canary)!r}, 'w')\nfrom transformers import PreTrainedTokenizerFast\n"
        "class EvilTok(PreTrainedTokenizerFast):\n    pass\n"
    )
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTok", auto_map={"AutoTokenizer": [None, "evil_tok.EvilTok"]})
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="run only with --trust-remote-code"):
        models.load_model(model_dir)
    assert not canary.exists()


@pytest.mark.parametrize(
    "trainer_state",
    [b"\xff", b"{", b"[]", b'{"log_history": 5}', b'{"log_history": [{"step": "x", "reward": 1}]}',
     b'{"log_history": [{"step": 1, "reward": {"a": 1}}]}', b"[" * 100_000],
)
def test_a_hostile_trainer_log_only_loses_the_reward_curve(tmp_path, trainer_state, caplog):
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "checkpoint-1" / "config.json").write_text("{}")
    (run / "checkpoint-1" / "trainer_state.json").write_bytes(trainer_state)
    assert read_reward_log(run) == {}
    assert "reward curve left out" in caplog.text


def test_trust_remote_code_reaches_every_loader_only_when_asked(tiny_checkpoint, tmp_path, monkeypatch):
    import transformers

    seen: list[tuple[str, object]] = []
    for name in ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"):
        auto = getattr(transformers, name)
        real = auto.from_pretrained

        def spy(*args, _real=real, _name=name, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    for asked in (False, True):
        seen.clear()
        check = DriftCheck(tiny_checkpoint, tmp_path / "b", update_baseline=True, cache_dir=None, trust_remote_code=asked)
        check.planned_layers()
        check._load(str(tiny_checkpoint))
        assert {name for name, _ in seen} == {"AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"}
        assert all(value is asked for _name, value in seen), seen


def upstream_dir(root: Path, roles: dict[str, list[str]]) -> Path:
    instructions = root / "roles" / "instructions"
    instructions.mkdir(parents=True)
    for name, prompts in {"default": ["You are {model_name}."], **roles}.items():
        (instructions / f"{name}.json").write_text(json.dumps({"instruction": [{"pos": p} for p in prompts]}))
    (root / "extraction_questions.jsonl").write_text('{"question": "Who are you?"}\n')
    return root


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "/etc/passwd", "a/b", "a\\b", "a\x00b", "..", ".", ".hidden", "", "tab\there", "line\nbreak", "C:\\x"],
)
def test_role_names_that_are_paths_are_refused(name):
    with pytest.raises(PersonaSetError) as refused:
        PersonaSet("t", ("",), {name: ("x",), "other": ("y",)}, ("q",))
    assert "\n" not in str(refused.value) and "refused" in str(refused.value)


@pytest.mark.parametrize("stem", ["..", ".hidden", "a\\b", "line\nbreak", "semi;colon"])
def test_role_files_named_like_paths_are_refused(tmp_path, stem):
    root = upstream_dir(tmp_path / "set", {"pirate": ["Arr."], "ghost": ["Boo."]})
    (root / "roles" / "instructions" / f"{stem}.json").write_text(json.dumps({"instruction": [{"pos": "x"}]}))
    with pytest.raises(PersonaSetError, match="refused"):
        load_persona_dir(root)


@pytest.mark.parametrize("which", ["role", "questions", "role_list", "instructions dir"])
def test_symlinks_out_of_the_persona_dir_are_refused(tmp_path, which):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.json"
    secret.write_text(json.dumps({"instruction": [{"pos": "a secret"}], "question": "a secret"}))
    root = upstream_dir(tmp_path / "set", {"pirate": ["Arr."], "ghost": ["Boo."]})
    instructions = root / "roles" / "instructions"
    if which == "role":
        (instructions / "spy.json").symlink_to(secret)
    elif which == "questions":
        (root / "extraction_questions.jsonl").unlink()
        (root / "extraction_questions.jsonl").symlink_to(secret)
    elif which == "role_list":
        (root / "roles" / "role_list.json").symlink_to(secret)
    else:
        shutil.copytree(instructions, outside / "instructions")
        shutil.rmtree(instructions)
        instructions.symlink_to(outside / "instructions")
    with pytest.raises(PersonaSetError, match="links outside the persona set"):
        load_persona_dir(root)


def test_symlinks_inside_the_persona_dir_are_fine(tmp_path):
    root = upstream_dir(tmp_path / "set", {"pirate": ["Arr."], "ghost": ["Boo."]})
    (root / "roles" / "instructions" / "buccaneer.json").symlink_to(root / "roles" / "instructions" / "pirate.json")
    assert load_persona_dir(root).roles["buccaneer"] == ("Arr.",)


def test_upstream_set_loads_with_every_role(tmp_path):
    upstream = Path("/work/shared/data/assistant-axis")
    if not upstream.is_dir():
        pytest.skip("upstream persona data not present")
    loaded = load_persona_dir(upstream)
    assert len(loaded.roles) == len(list((upstream / "roles" / "instructions").glob("*.json"))) - 1
