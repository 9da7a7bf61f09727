"""Design study: projection noise floor vs number of conversations on the demo model.

Measures the thorough design once (cached in .drift_cache), then evaluates sub-designs by taking their
conversations out of it, and prints the markdown table in docs/noise-floor.md.

    python scripts/noise_floor_study.py [--model demo/smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse

import numpy as np

from drift_suite.measure.conversations import Design
from drift_suite.measure.extract import GenerationSettings
from drift_suite.measure.measurement import measure
from drift_suite.common.metrics import bootstrap_noise_floor
from drift_suite.measure.models import load_model
from drift_suite.measure.personas import DEFAULT_ROLE, builtin_persona_set

DESIGNS = [(4, 1, 2), (8, 1, 2), (8, 1, 4), (12, 1, 4), (16, 1, 4), (20, 1, 4), (20, 2, 4), (20, 2, 6), (20, 3, 6)]
BAND, EARLY = list(range(16, 27)), list(range(8, 16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo/smollm2-135m-instruct")
    args = parser.parse_args()
    pool = measure(load_model(args.model), builtin_persona_set(), Design.thorough(), GenerationSettings())
    true_norm = np.linalg.norm(pool.axis, axis=-1)
    rows_by_role_prompt: dict[tuple[str, int], list[int]] = {}
    for index, conversation in enumerate(pool.conversations):
        if not conversation.is_default:
            rows_by_role_prompt.setdefault((conversation.role, conversation.prompt_index), []).append(index)
    print("| design (default q × role prompts × role q) | conversations | default conv. | σ/‖axis‖ max, layers 16–26 "
          "| mean 16–26 | max, layers 8–15 | axis angle RMS (°) | accessibility σ (mean) |")
    print("|---|---|---|---|---|---|---|---|")
    for default_q, role_p, role_q in DESIGNS:
        keep = [i for i, c in enumerate(pool.conversations) if c.is_default and c.question_index < default_q]
        for (_role, prompt), rows in rows_by_role_prompt.items():
            if prompt < role_p:
                keep += rows[:role_q]
        keep_rows = np.array(sorted(keep))
        labels = pool.labels[keep_rows]
        noise = bootstrap_noise_floor(pool.means[keep_rows], labels, pool.roles, DEFAULT_ROLE, BAND, n_boot=300)
        relative = noise.projection / true_norm
        print(f"| {default_q} × {role_p} × {role_q} | {len(keep_rows)} | {int((labels == DEFAULT_ROLE).sum())} "
              f"| {relative[BAND].max():.3f} | {relative[BAND].mean():.3f} | {relative[EARLY].max():.3f} "
              f"| {noise.angle_deg[BAND].mean():.1f} | {noise.accessibility.mean():.3f} |")


if __name__ == "__main__":
    main()
