"""Beside the gate, train: GRPO with TRL (``trainer``; ``python -m drift_suite.train``), the drift probe and
the training log (``callbacks``), reward specs (``rewards``, ``gsm8k``, ``style_rewards``) and synthetic
word problems (``synthetic``). Imports ``gate``, ``measure`` and ``common``; nothing of ``outputs``."""
