"""drift_suite: a pytest regression gate for Assistant-Axis persona drift after RL fine-tuning."""

__version__ = "0.2.0"
