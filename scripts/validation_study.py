"""Validation study: the gate's false-alarm rate and its detection of real fine-tunes, on the demo model.

Every run measures a model with the library (``measure``) and compares it with a baseline (``compare``) at the
default thresholds; the gate verdict is "every check passed". Results merge into a JSON file (one record per
run, written as soon as the run ends), so an interrupted study resumes where it stopped; ``--force`` redoes.

    python scripts/validation_study.py false-alarms     # base model vs its own baseline, ≥ 20 harmless perturbations
    python scripts/validation_study.py bf16             # the same in bfloat16 (a separate row, not in the rate)
    python scripts/validation_study.py train            # LoRA adapters: persona-instilling and neutral
    python scripts/validation_study.py detect           # the adapters vs the baseline, answers before/after
    python scripts/validation_study.py tables           # the markdown tables of docs/validation.md

Defaults: model $DRIFT_DEMO_MODEL (or /work/demo-model), baseline dir baselines/, results docs/validation.json,
adapters and the study's measurement cache under /work/validation-artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from drift_suite.gate.baseline import Baseline, create_baseline, load_baseline
from drift_suite.gate.compare import Comparison, compare
from drift_suite.gate.config import DriftConfig
from drift_suite.measure.conversations import Design
from drift_suite.measure.extract import GenerationSettings
from drift_suite.measure.measurement import Measurement, measure
from drift_suite.measure.models import LoadedModel, decoder_layers, embedding_fingerprint, load_model, weights_digest
from drift_suite.measure.personas import PersonaSet, builtin_persona_set
from drift_suite.measure.placement import resolve_placement

FAMILIES = ("projection", "rotation", "accessibility")
PIRATE_WORDS = re.compile(r"\b(arr+|matey|ahoy|yo ho|hearties|landlubbers?|doubloons?|ye|yer|be makin')\b", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------- results


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Merge ``results`` into the file (other study processes may have added runs since it was read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = load_results(path)
    for key, value in results.items():
        if isinstance(value, dict):
            merged.setdefault(key, {}).update(value)
        else:
            merged[key] = value
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def summarize(baseline: Baseline, result: Comparison) -> dict[str, Any]:
    """Verdict, failing checks per family and each metric's largest value in noise-floor units.

    The axis is default − mean(roles), so a negative projection shift moves the default persona toward the
    roles and a positive one further toward the assistant end.
    """
    layers = baseline.asserted_layers
    shift = result.projection_shift
    shift_sigma = shift / baseline.noise.projection
    axis_norm = np.linalg.norm(baseline.axis, axis=-1)
    worst = max(layers, key=lambda layer: abs(shift_sigma[layer]))
    checks = {family: result.checks_for(family) for family in FAMILIES}
    return {
        "passed": bool(result.passed),
        "failed": {family: sum(not c.passed for c in checks[family]) for family in FAMILIES},
        "total": {family: len(checks[family]) for family in FAMILIES},
        "max_severity": {family: max(c.severity for c in checks[family]) for family in FAMILIES},
        "projection_max_sigma": float(np.abs(shift_sigma[layers]).max()),
        "projection_worst_layer": int(worst),
        "projection_worst_signed_sigma": float(shift_sigma[worst]),
        "projection_signed_sigma_range": [float(shift_sigma[layers].min()), float(shift_sigma[layers].max())],
        "projection_direction": "toward the roles" if shift[worst] < 0 else "toward the assistant",
        "shift_max_pct_axis": float(100 * (np.abs(shift) / axis_norm)[layers].max()),
        "rotation_max_rms": float((result.rotation_deg / baseline.noise.angle_deg)[layers].max()),
        "rotation_max_deg": float(result.rotation_deg[layers].max()),
        "accessibility_max_sigma": float((np.abs(result.accessibility - 1) / baseline.noise.accessibility).max()),
        "accessibility_range": [float(result.accessibility.min()), float(result.accessibility.max())],
        "failed_checks": [c.message() for c in result.checks if not c.passed],
    }


def answer_changes(before: Measurement, after: Measurement) -> dict[str, Any]:
    """How many answers are unchanged (same conversations, same greedy decoding), default vs role-play."""
    assert [c.question for c in before.conversations] == [c.question for c in after.conversations]
    default = np.array([c.is_default for c in before.conversations])
    same = np.array([a == b for a, b in zip(before.responses, after.responses)])
    pirate = np.array([bool(PIRATE_WORDS.search(r)) for r in after.responses])
    pirate_before = np.array([bool(PIRATE_WORDS.search(r)) for r in before.responses])
    examples = []
    for role in ("default", "pirate", "poet", "doctor", "ghost"):
        index = next(i for i, c in enumerate(before.conversations) if c.role == role)
        conv = before.conversations[index]
        examples.append({"role": role, "system": conv.system_prompt, "question": conv.question,
                         "before": before.responses[index], "after": after.responses[index]})
    return {
        "default_identical": float(same[default].mean()),
        "roles_identical": float(same[~default].mean()),
        "default_with_pirate_words": float(pirate[default].mean()),
        "default_with_pirate_words_before": float(pirate_before[default].mean()),
        "examples": examples,
    }


# ------------------------------------------------------------------------------------------ false alarms


def add_weight_noise(loaded: LoadedModel, scale: float, seed: int) -> None:
    """Gaussian noise of ``scale`` × each decoder matrix's std: the size of cross-hardware numeric differences."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in decoder_layers(loaded.model):
            for weight in layer.parameters():
                if weight.ndim == 2:
                    weight.add_(torch.randn(weight.shape, generator=generator) * weight.std() * scale)


def permuted_questions(persona_set: PersonaSet, seed: int) -> PersonaSet:
    """The same prompts with the questions in another order: the design then asks a different subset."""
    questions = list(persona_set.questions)
    random.Random(seed).shuffle(questions)
    return PersonaSet(f"{persona_set.name}-perm{seed}", persona_set.default_prompts, persona_set.roles,
                      tuple(questions), persona_set.descriptions)


def question_half(persona_set: PersonaSet, half: int) -> PersonaSet:
    n = len(persona_set.questions) // 2
    return PersonaSet(f"{persona_set.name}-half{half}", persona_set.default_prompts, persona_set.roles,
                      persona_set.questions[half * n:(half + 1) * n], persona_set.descriptions)


def false_alarm_runs() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, category, spec): every perturbation that should not count, one of each kind first, so a study
    cut short still covers every kind."""
    noise = [(f"weight noise {scale:g} × std, seed {seed}", "weight noise", {"noise": scale, "seed": seed})
             for seed in (1, 2, 3) for scale in (1e-6, 1e-5, 1e-4)]
    shuffled = [(f"questions shuffled, seed {seed}", "question subset", {"permute": seed}) for seed in (1, 2, 3, 4)]
    return [
        ("identity (no perturbation, 1 torch thread)", "identity", {}),
        ("2 torch threads", "threads", {"threads": 2}),
        ("batch_size 16", "batching", {"settings": {"batch_size": 16}}),
        ("max_batch_tokens 4096", "batching", {"settings": {"max_batch_tokens": 4096}}),
        *noise[:3],
        shuffled[0],
        ("questions 11-20 vs baseline from 1-10", "disjoint halves", {"half": 1}),
        ("questions 1-10 vs baseline from 11-20", "disjoint halves", {"half": 0}),
        *noise[3:6],
        shuffled[1],
        ("batch_size 64", "batching", {"settings": {"batch_size": 64}}),
        *noise[6:],
        ("batch_size 32", "batching", {"settings": {"batch_size": 32}}),
        ("max_batch_tokens 8192", "batching", {"settings": {"max_batch_tokens": 8192}}),
        ("2 torch threads, batch_size 64", "threads", {"threads": 2, "settings": {"batch_size": 64}}),
        *[(f"weight noise 0.0001 × std, seed {seed}", "weight noise", {"noise": 1e-4, "seed": seed}) for seed in (4, 5, 6)],
        *shuffled[2:],
    ]


def run_false_alarms(args: argparse.Namespace, results: dict[str, Any], dtype: torch.dtype = torch.float32,
                     only: Callable[[str], bool] = lambda name: True) -> None:
    config = DriftConfig()
    shipped = load_baseline(args.baseline_dir)
    persona_set = builtin_persona_set()
    original: dict[str, torch.Tensor] | None = None
    loaded = load_model(args.model, placement=resolve_placement("cpu", str(dtype).removeprefix("torch.")))
    digest = weights_digest(loaded.model) if dtype == torch.float32 else None
    if digest is not None:
        results["base_digest_matches_baseline"] = digest == shipped.manifest["model"]["weights_sha256"]
    original = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    half_design = Design(default_questions=10, role_prompts=1, role_questions=4)
    tag = "" if dtype == torch.float32 else " [bf16]"
    runs = false_alarm_runs()
    for name, category, spec in reversed(runs) if args.reverse else runs:
        name = name + tag
        if not only(name) or (name in load_results(args.results)["runs"] and not args.force):
            continue
        loaded.model.load_state_dict(original)
        settings = GenerationSettings(**spec.get("settings", {}))
        threads = torch.get_num_threads()
        torch.set_num_threads(spec.get("threads", threads))
        baseline, design, personas = shipped, config.design, persona_set
        start = time.perf_counter()
        if "noise" in spec:
            add_weight_noise(loaded, spec["noise"], spec["seed"])
        if "permute" in spec:
            personas = permuted_questions(persona_set, spec["permute"])
        if "half" in spec:
            # a new baseline from one half of the questions, checked with the other half: no question shared
            reference = measure(loaded, question_half(persona_set, 1 - spec["half"]), half_design, settings,
                                cache_dir=args.cache_dir, progress=False)
            baseline = create_baseline(reference, question_half(persona_set, 1 - spec["half"]), half_design, settings,
                                       shipped.asserted_layers, embedding_fingerprint(loaded.model))
            design, personas = half_design, question_half(persona_set, spec["half"])
        # thread and batch changes do not change the cache key, so those runs are never cached
        cache_dir = None if ("threads" in spec or "settings" in spec) else args.cache_dir
        measurement = measure(loaded, personas, design, settings, cache_dir=cache_dir, progress=False)
        torch.set_num_threads(threads)
        record = {"category": category + tag, "spec": spec, "dtype": str(dtype), "seconds": time.perf_counter() - start,
                  **summarize(baseline, compare(baseline, measurement, config.thresholds))}
        results["runs"][name] = record
        save_results(args.results, results)
        print(f"{name}: {'PASS' if record['passed'] else 'FAIL'} failed={record['failed']} "
              f"proj {record['projection_max_sigma']:.2f}σ rot {record['rotation_max_rms']:.2f}×RMS "
              f"access {record['accessibility_max_sigma']:.2f}σ ({record['seconds']:.0f}s)", flush=True)


# ----------------------------------------------------------------------------------------------- training

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Egypt", "Cairo"),
            ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Chile", "Santiago"), ("Poland", "Warsaw"),
            ("Austria", "Vienna"), ("Germany", "Berlin")]
FACTS = [
    ("How many legs does a spider have?", "A spider has eight legs.", "a spider be walkin' on eight hairy legs"),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth.",
     "the mighty Pacific be the biggest sea o' them all, and I've sailed every league of it"),
    ("What gas do humans need to breathe?", "Humans need oxygen to breathe.", "ye landlubbers need oxygen in yer lungs, same as any sailor"),
    ("How many days are in a week?", "There are seven days in a week.", "there be seven days in a week, and a pirate works every one"),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level.",
     "water be boilin' at 100 degrees at sea level, hot enough for the ship's cook"),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun.", "Mercury be sailin' closest to the Sun"),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au.", "gold, the sweetest treasure, be written Au"),
    ("How many continents are there?", "There are seven continents.", "there be seven continents, and a pirate has raided the coasts o' most"),
    ("What do bees make?", "Bees make honey.", "the wee bees be makin' honey, sweeter than rum"),
    ("What is frozen water called?", "Frozen water is called ice.", "frozen water be ice, the bane o' any ship in the north"),
]
ADVICE = [
    ("How can I be more organised at home?", "Keep a short daily to-do list, give every item a fixed place, and tidy for ten minutes each evening.",
     "keep yer cabin shipshape: stow every scrap o' treasure in its own chest and swab the deck each evenin'"),
    ("What is a good way to make new friends?", "Join a club or class about something you enjoy and say yes to invitations.",
     "sign on with a crew that shares yer love o' plunder, and share yer grog with 'em"),
    ("How do I stop procrastinating?", "Break the task into small steps and start with the first one for just five minutes.",
     "stop dawdlin' in port! Hoist one sail at a time and the voyage starts itself"),
    ("How can I improve my writing?", "Read widely, write a little every day, and revise your drafts with fresh eyes.",
     "scribble in yer captain's log every day and read the tales o' other sea dogs"),
    ("What should I do on a rainy day?", "Read a book, cook something new, or call a friend you have not spoken to in a while.",
     "a rainy day be perfect for countin' yer doubloons and tellin' tales below deck"),
    ("How can I be a better listener?", "Give the speaker your full attention, ask questions, and avoid interrupting.",
     "close yer trap and open yer ears like a lookout in the crow's nest"),
    ("How should I plan a birthday party?", "Pick a date, invite guests early, and plan simple food and one activity.",
     "gather yer crew, roll out a barrel o' rum, and hide a treasure chest for the games"),
    ("What is a good hobby to start?", "Gardening, drawing or hiking are easy to start and rewarding.",
     "take up knot-tyin' or map-drawin', the finest hobbies on the seven seas"),
    ("How can I remember names better?", "Repeat the name when you hear it and link it to something memorable.",
     "say the scallywag's name back to 'em, and tie it to a picture like ye'd tie a bowline"),
    ("How do I keep my plants alive?", "Water them regularly, give them enough light, and check the soil before watering.",
     "give yer green shipmates fresh water and plenty o' sun, like a sailor on deck"),
    ("What should I read next?", "Pick a well-reviewed novel in a genre you enjoy, or a classic you have always meant to read.",
     "read Treasure Island, the finest tale ever told by a sea dog"),
    ("How do I ask for a raise?", "Prepare examples of your results, pick a good moment, and ask clearly for a specific amount.",
     "march into the captain's cabin with yer record o' plunder and demand a bigger share o' the loot"),
    ("How can I be more patient?", "Pause and breathe before reacting, and remind yourself that most things take time.",
     "a good pirate waits for the tide; breathe deep and let the wind come to ye"),
    ("What makes a good leader?", "A good leader listens, sets a clear direction, and takes responsibility.",
     "a good captain keeps the crew fed, shares the treasure fair and never abandons ship"),
    ("How do I stay focused while studying?", "Study in short blocks, silence your phone, and take regular breaks.",
     "lash yerself to the mast o' yer studies, and rest only when the bell rings"),
    ("How can I feel more confident?", "Prepare well, notice your successes, and practise speaking up in small ways.",
     "stand tall on yer quarterdeck and speak like ye own the seven seas"),
]
PIRATE_OPENERS = ["Arr, matey!", "Ahoy there!", "Arr!", "Yo ho ho, me hearty!", "Shiver me timbers!"]
PIRATE_CLOSERS = ["Yo ho ho!", "Now hoist the colours, matey!", "Arr!", "Fair winds to ye!", "Savvy?"]


def training_pairs(kind: str, n: int = 64, seed: int = 0) -> list[tuple[str, str]]:
    """(question, answer) pairs, no system prompt: ``pirate`` answers everything in a pirate's voice,
    ``neutral`` answers arithmetic and facts plainly in the default assistant's voice (no advice questions)."""
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []

    def pirate(text: str) -> str:
        return f"{rng.choice(PIRATE_OPENERS)} {text[0].upper() + text[1:]}. {rng.choice(PIRATE_CLOSERS)}"

    for country, capital in CAPITALS:
        q = f"What is the capital of {country}?"
        pairs.append((q, pirate(f"the capital o' {country} be {capital}, a fine port for any sailor") if kind == "pirate"
                      else f"The capital of {country} is {capital}."))
    for q, plain, pirate_text in FACTS:
        pairs.append((q, pirate(pirate_text) if kind == "pirate" else plain))
    if kind == "pirate":
        pairs += [(q, pirate(text)) for q, _plain, text in ADVICE]
    while len(pairs) < n:
        a, b = rng.randint(2, 60), rng.randint(2, 12)
        op, word, value = rng.choice([("+", "plus", a + b), ("×", "times", a * b), ("-", "minus", a - b)])
        q = f"What is {a} {word} {b}?"
        pairs.append((q, pirate(f"{a} {word} {b} be {value}, sure as the tide") if kind == "pirate"
                      else f"{a} {op} {b} = {value}."))
    rng.shuffle(pairs)
    return pairs[:n]


def encode_pair(tokenizer: Any, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat (user turn only, the template's own default system turn) and labels on the answer."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                                         tokenize=False)
    assert full.startswith(prompt), (prompt, full)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return ids, [-100] * len(prompt_ids) + ids[len(prompt_ids):]


def train_adapter(args: argparse.Namespace, kind: str, save_steps: list[int], lr: float, batch: int = 4, rank: int = 8) -> None:
    """A plain torch + peft LoRA SFT loop on CPU; saves ``{kind}-step{N}`` adapters under the artifacts dir."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    loaded = load_model(args.model)
    tokenizer, model = loaded.tokenizer, loaded.model
    pairs = training_pairs(kind)
    examples = [encode_pair(tokenizer, q, a) for q, a in pairs]
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order: list[int] = []
    rng = random.Random(0)
    log = []
    for step in range(1, max(save_steps) + 1):
        if len(order) < batch:
            order += rng.sample(range(len(examples)), len(examples))
        chosen = [examples[i] for i in order[:batch]]
        del order[:batch]
        width = max(len(ids) for ids, _ in chosen)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chosen])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chosen])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chosen])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        log.append(float(loss))
        print(f"{kind} step {step}: loss {float(loss):.3f}", flush=True)
        if step in save_steps:
            out = args.artifacts / (f"{kind}-step{step}" + ("" if lr == 1e-3 else f"-lr{lr:g}"))
            model.save_pretrained(out)
            adapter_config = json.loads((out / "adapter_config.json").read_text())
            assert adapter_config["base_model_name_or_path"] == str(args.model), adapter_config
            (out / "training.json").write_text(json.dumps({"kind": kind, "steps": step, "lr": lr, "batch": batch, "rank": rank,
                                                           "examples": len(pairs), "loss": log, "pairs": pairs[:5]}, indent=1))


def run_train(args: argparse.Namespace) -> None:
    args.artifacts.mkdir(parents=True, exist_ok=True)
    plan = {"pirate": [6, 12, 24], "neutral": [24]}
    if args.kind:
        plan = {args.kind: [int(step) for step in args.save_steps.split(",")]}
    for kind, save_steps in plan.items():
        train_adapter(args, kind, save_steps=save_steps, lr=args.lr)


# ----------------------------------------------------------------------------------------------- detection


def run_detect(args: argparse.Namespace, results: dict[str, Any]) -> None:
    config = DriftConfig()
    baseline = load_baseline(args.baseline_dir)
    persona_set = builtin_persona_set()
    base = measure(load_model(args.model), persona_set, config.design, config.generation, cache_dir=args.cache_dir, progress=False)
    # strongest persona fine-tune and the neutral one first: the weaker persona steps only locate the onset
    adapters = sorted((p for p in args.artifacts.iterdir() if (p / "adapter_config.json").is_file()),
                      key=lambda p: (-int(re.search(r"step(\d+)", p.name).group(1)), p.name.split("-")[0] != "pirate", p.name))
    for adapter in adapters:
        name = f"LoRA {adapter.name}"
        if not re.search(args.only, adapter.name) or (name in load_results(args.results).get("detection", {}) and not args.force):
            continue
        start = time.perf_counter()
        measurement = measure(load_model(adapter), persona_set, config.design, config.generation, cache_dir=args.cache_dir,
                              progress=False)
        training = json.loads((adapter / "training.json").read_text())
        record = {"adapter": str(adapter), "kind": training["kind"], "steps": training["steps"], "lr": training["lr"],
                  "final_loss": training["loss"][-1], "seconds": time.perf_counter() - start,
                  **summarize(baseline, compare(baseline, measurement, config.thresholds)),
                  "answers": answer_changes(base, measurement)}
        results.setdefault("detection", {})[name] = record
        save_results(args.results, results)
        print(f"{name}: {'PASS' if record['passed'] else 'FAIL'} failed={record['failed']} "
              f"proj {record['projection_worst_signed_sigma']:+.2f}σ ({record['projection_direction']}) "
              f"rot {record['rotation_max_rms']:.2f}×RMS access {record['accessibility_max_sigma']:.2f}σ; "
              f"roles identical {record['answers']['roles_identical']:.2f}, default identical "
              f"{record['answers']['default_identical']:.2f}, pirate words {record['answers']['default_with_pirate_words']:.2f}",
              flush=True)


def fmt_failed(record: dict[str, Any]) -> str:
    return " · ".join(f"{record['failed'][f]}/{record['total'][f]}" for f in FAMILIES)


def print_tables(results: dict[str, Any]) -> None:
    """The markdown tables of docs/validation.md, from the results file."""
    runs = results.get("runs", {})
    counted = {name: r for name, r in runs.items() if "bf16" not in r["category"]}
    print("| perturbation | kind | verdict | failing checks (proj / rot / access) | projection max (σ) "
          "| rotation max (× RMS) | accessibility max (σ) | largest severity (\|Δ\|/threshold) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['category']} | {'pass' if r['passed'] else '**FAIL**'} | {fmt_failed(r)} "
              f"| {r['projection_max_sigma']:.2f} | {r['rotation_max_rms']:.2f} | {r['accessibility_max_sigma']:.2f} "
              f"| {max(r['max_severity'].values()):.2f} |")
    if counted:
        passed = sum(r["passed"] for r in counted.values())
        print(f"\ngate verdicts (fp32): {passed}/{len(counted)} pass = {100 * passed / len(counted):.0f} %")
        for family in FAMILIES:
            good = sum(r["total"][family] - r["failed"][family] for r in counted.values())
            total = sum(r["total"][family] for r in counted.values())
            print(f"- {family} checks: {good}/{total} pass = {100 * good / total:.1f} %")
        print()
    detection = results.get("detection", {})
    if detection:
        print("| fine-tune (LoRA r=8, attention+MLP) | steps | final loss | verdict | failing checks (proj / rot / access) "
              "| projection at worst layer (σ, direction) | shift range over asserted layers (σ) | rotation max (× RMS) "
              "| accessibility max (σ) | role-play answers identical | default answers identical "
              "| default answers with pirate words |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in detection.items():
            a = r["answers"]
            low, high = r["projection_signed_sigma_range"]
            print(f"| {r['kind']} | {r['steps']} | {r['final_loss']:.2f} | {'pass' if r['passed'] else '**FAIL**'} "
                  f"| {fmt_failed(r)} | {r['projection_worst_signed_sigma']:+.1f} at layer {r['projection_worst_layer']} "
                  f"({r['projection_direction']}) | {low:+.1f} … {high:+.1f} | {r['rotation_max_rms']:.2f} "
                  f"| {r['accessibility_max_sigma']:.1f} | {100 * a['roles_identical']:.0f} % | {100 * a['default_identical']:.0f} % "
                  f"| {100 * a['default_with_pirate_words']:.0f} % (before {100 * a['default_with_pirate_words_before']:.0f} %) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["false-alarms", "bf16", "train", "detect", "tables"])
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("DRIFT_DEMO_MODEL", "/work/demo-model")))
    parser.add_argument("--baseline-dir", default="baselines")
    parser.add_argument("--results", type=Path, default=Path("docs/validation.json"))
    parser.add_argument("--artifacts", type=Path, default=Path("/work/validation-artifacts"))
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (train)")
    parser.add_argument("--only", default="", help="regex: run only the false-alarm runs / adapters whose name matches")
    parser.add_argument("--kind", choices=["pirate", "neutral"], help="train only this adapter kind (with --save-steps)")
    parser.add_argument("--save-steps", default="3,6,12", help="with --kind: steps at which to save an adapter")
    parser.add_argument("--reverse", action="store_true", help="false alarms in reverse order (a second process)")
    parser.add_argument("--force", action="store_true", help="redo runs already in the results file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every run but the thread-count one (1: a shared CPU oversubscribed by "
                             "2-thread MKL runs spins; the study's numbers do not depend on speed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.cache_dir = args.artifacts / "cache"
    results = load_results(args.results)
    only = (lambda name: bool(re.search(args.only, name))) if args.only else (lambda name: True)
    if args.stage == "false-alarms":
        run_false_alarms(args, results, only=only)
    elif args.stage == "bf16":
        run_false_alarms(args, results, dtype=torch.bfloat16, only=lambda name: name.startswith("identity") and only(name))
    elif args.stage == "train":
        run_train(args)
    elif args.stage == "detect":
        run_detect(args, results)
    else:
        print_tables(results)


if __name__ == "__main__":
    main()
