"""Errors a user can act on, and the exit codes that keep "broken" apart from "drift".

Each error carries a one-line message, never a traceback in the CLI or the plugin. The exit codes are the
same under pytest and ``drift-suite check`` (docs/options.md, "Exit codes"): a CI job reads 1 as drift and anything
above 1 as a run that could not give a verdict.
"""

EXIT_PASS = 0
"""Every check within tolerance."""
EXIT_DRIFT = 1
"""At least one check failed: the model drifted (pytest: tests failed)."""
EXIT_INTERRUPTED = 2
"""Interrupted (Ctrl-C), or a command line the parser rejects (``drift-suite`` options, as argparse does)."""
EXIT_MEASUREMENT_FAILED = 3
"""The model could not be loaded or measured: corrupt weights or adapter, NaN or Inf in its activations or logits,
out of memory, an internal error."""
EXIT_USAGE = 4
"""Bad input found before measuring, or a baseline that does not fit the checkpoint: no verdict possible."""
EXIT_NO_TESTS = 5
"""pytest collected no tests."""


class DriftSuiteError(Exception):
    """Base class: the message is one line that says what is wrong and what to do about it."""

    exit_code = EXIT_MEASUREMENT_FAILED


class CheckpointError(DriftSuiteError):
    """A checkpoint directory or model id that cannot be loaded."""


class BaselineError(DriftSuiteError):
    """A baseline that is missing, corrupt, or was made for another model or persona set."""

    exit_code = EXIT_USAGE


class ConfigError(DriftSuiteError):
    """A setting in ``[tool.drift_suite]`` or on the command line that cannot be used (unknown key or value)."""

    exit_code = EXIT_USAGE


class NonFiniteError(DriftSuiteError):
    """NaN or Inf in a model's activations or logits while measuring: a broken checkpoint, not drift.

    Values too large to square in float32 count too: the model's next RMSNorm squares them in float32, so it
    computes with Inf (a matrix scaled by 1e30 gives finite activations, and nonsense). ``layer`` is the first
    decoder layer whose output was non-finite (None: the decoder layers were finite, the logits were not);
    ``row`` is the prompt, in the order measured, where it was seen first.
    """

    exit_code = EXIT_MEASUREMENT_FAILED

    def __init__(self, message: str, layer: int | None = None, row: int | None = None):
        super().__init__(message)
        self.layer = layer
        self.row = row


class PersonaSetError(DriftSuiteError):
    """A persona-set directory that does not follow the upstream format."""

    exit_code = EXIT_USAGE


def failure_exit_code(exc: BaseException) -> int:
    """The exit code of a run that stopped on ``exc`` while loading or measuring (not a verdict)."""
    return exc.exit_code if isinstance(exc, DriftSuiteError) else EXIT_MEASUREMENT_FAILED


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: our own errors as they are, anything else as ``Type: first line of its message``."""
    if isinstance(exc, DriftSuiteError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
