"""Errors a user can act on: each carries a one-line message, never a traceback in the CLI or the plugin."""


class DriftSuiteError(Exception):
    """Base class: the message is one line that says what is wrong and what to do about it."""


class CheckpointError(DriftSuiteError):
    """A checkpoint directory or model id that cannot be loaded."""


class BaselineError(DriftSuiteError):
    """A baseline that is missing, corrupt, or was made for another model or persona set."""


class PersonaSetError(DriftSuiteError):
    """A persona-set directory that does not follow the upstream format."""
