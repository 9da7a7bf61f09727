"""The rewards of a training run: ``--reward`` specs resolved into TRL reward functions, checked as they run.

A spec is a comma list; each item is one of:

* ``gsm8k``: :func:`drift_suite.train.gsm8k.correctness_reward` (the default), logged as ``correctness_reward``;
* ``format``: :func:`drift_suite.train.gsm8k.format_reward` (0.1 for an explicit ``#### N``), logged as ``format_reward``;
* ``FILE.py:FUNC``: function ``FUNC`` of a Python file, loaded by path; logged as ``FUNC``;
* ``package.module:FUNC``: function ``FUNC`` of an importable module; logged as ``FUNC``;
* a reward model: a local dir or a hub id (``org/name``) of a sequence-classification model with one label,
  handed to TRL as a string (TRL loads it, without remote code); logged as the dir's or id's last part.

TRL logs each reward's batch mean as ``rewards/<name>/mean`` (and ``rewards/<name>/std``), ``<name>`` as above.
User functions run inside a checking wrapper (:class:`CheckedReward`): an exception, a NaN or infinite reward,
or a list of the wrong length stops the run with one :class:`RewardFunctionError` line that names the reward
and the optimizer step. ``None`` stays allowed (TRL's "not applicable to this sample").
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.errors import DriftSuiteError, EXIT_MEASUREMENT_FAILED

DEFAULT_REWARD = "gsm8k"


class RewardSpecError(DriftSuiteError):
    """A ``--reward`` / ``--reward_weights`` value that names nothing usable (refused before any model loads)."""


class RewardFunctionError(DriftSuiteError):
    """A reward function that failed while training: raised, returned NaN/Inf or a list of the wrong length."""

    exit_code = EXIT_MEASUREMENT_FAILED


@dataclass(frozen=True)
class Reward:
    """One resolved ``--reward`` item."""

    spec: str
    """What the user wrote."""
    name: str
    """The name TRL logs it under: ``rewards/<name>/mean``."""
    func: Callable[..., Any] | str
    """What goes into ``GRPOTrainer(reward_funcs=[...])``: a callable, or a reward model's dir/id."""


def _builtin(name: str) -> Callable[..., list[float]]:
    from .gsm8k import correctness_reward, format_reward

    return {"gsm8k": correctness_reward, "format": format_reward}[name]


BUILTIN_REWARDS = ("gsm8k", "format")


class CheckedReward:
    """A user reward function that fails loudly and in one line (see the module docstring).

    ``step`` is read from TRL's ``trainer_state`` keyword (the optimizer steps done; the failing one is the
    next); called without it (outside a trainer) the step reads ``?``.
    """

    def __init__(self, func: Callable[..., Any], name: str):
        self.func = func
        self.__name__ = name  # what TRL's get_callable_name logs
        self.__qualname__ = name
        self.__doc__ = getattr(func, "__doc__", None)

    @staticmethod
    def _step(kwargs: dict[str, Any]) -> str:
        state = kwargs.get("trainer_state")
        step = getattr(state, "global_step", None)
        return "?" if step is None else str(step + 1)

    def _fail(self, kwargs: dict[str, Any], what: str) -> RewardFunctionError:
        return RewardFunctionError(f"reward {self.__name__} {what} at step {self._step(kwargs)}")

    def _checked(self, values: Any, completions: Any, kwargs: dict[str, Any]) -> list[Any]:
        try:
            values = list(values)
        except TypeError:
            raise self._fail(kwargs, f"returned {type(values).__name__}, not a list of floats") from None
        expected = len(completions) if completions is not None else len(values)
        if len(values) != expected:
            raise self._fail(kwargs, f"returned {len(values)} rewards for {expected} completions")
        for index, value in enumerate(values):
            if value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise self._fail(kwargs, f"returned {type(value).__name__} for completion {index}, not a number") from None
            if not math.isfinite(number):
                raise self._fail(kwargs, f"returned {number} for completion {index}")
        return values

    def _raised(self, exc: Exception, kwargs: dict[str, Any]) -> RewardFunctionError:
        from ..common.errors import one_line

        return self._fail(kwargs, f"raised {one_line(exc)}")

    def _outcome(self, values: Any, failure: Exception | None, args: tuple, kwargs: dict[str, Any]) -> list[Any]:
        error: RewardFunctionError | None = None
        if failure is not None:
            error = failure if isinstance(failure, RewardFunctionError) else self._raised(failure, kwargs)
        else:
            try:
                values = self._checked(values, kwargs.get("completions", args[1] if len(args) > 1 else None), kwargs)
            except RewardFunctionError as exc:
                error = exc
        _agree_across_processes(error)
        return values

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        values, failure = None, None
        try:
            values = self.func(*args, **kwargs)
        except Exception as exc:
            failure = exc
        return self._outcome(values, failure, args, kwargs)


class CheckedAsyncReward(CheckedReward):
    """:class:`CheckedReward` of an ``async def`` reward (TRL awaits those concurrently)."""

    async def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:  # type: ignore[override]
        values, failure = None, None
        try:
            values = await self.func(*args, **kwargs)
        except Exception as exc:
            failure = exc
        return self._outcome(values, failure, args, kwargs)


def _agree_across_processes(error: RewardFunctionError | None) -> None:
    """Raise ``error``, or under several processes the lowest failing rank's, on every rank.

    Each rank scores its own completions; a rank that gave up alone would leave the others waiting in TRL's
    gather of the rewards. One small exchange per reward call keeps them together.
    """
    from ..common.process import all_gather_bytes, process_context, raise_first_error

    if not process_context().distributed:
        if error is not None:
            raise error
        return
    messages = [m.decode() for m in all_gather_bytes(str(error).encode() if error is not None else b"")]
    raise_first_error(messages, RewardFunctionError)


def checked(func: Callable[..., Any], name: str) -> CheckedReward:
    """``func`` wrapped in the checking wrapper that suits it (sync or async)."""
    target = func.func if isinstance(func, functools.partial) else func
    is_async = asyncio.iscoroutinefunction(target) or asyncio.iscoroutinefunction(getattr(target, "__call__", None))
    return (CheckedAsyncReward if is_async else CheckedReward)(func, name)


def _load_file(path_text: str, spec: str) -> Any:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise RewardSpecError(f"--reward {spec}: no such file {path}")
    module_name = f"drift_suite_user_reward_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardSpecError(f"--reward {spec}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling inside the file look their module up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        from ..common.errors import one_line

        raise RewardSpecError(f"--reward {spec}: importing {path} failed: {one_line(exc)}") from None
    return module


def _load_module(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise RewardSpecError(f"--reward {spec}: no module named {exc.name or name!r}") from None
    except Exception as exc:
        from ..common.errors import one_line

        raise RewardSpecError(f"--reward {spec}: importing {name} failed: {one_line(exc)}") from None


def _function(spec: str) -> Reward:
    where, _, func_name = spec.rpartition(":")
    if not func_name.isidentifier():
        raise RewardSpecError(f"--reward {spec}: {func_name!r} is not a function name (use FILE.py:FUNC or package.module:FUNC)")
    module = _load_file(where, spec) if where.endswith(".py") else _load_module(where, spec)
    if not hasattr(module, func_name):
        raise RewardSpecError(f"--reward {spec}: {where} has no attribute {func_name!r}")
    func = getattr(module, func_name)
    if isinstance(func, type) or not callable(func):
        raise RewardSpecError(f"--reward {spec}: {where}:{func_name} is a {type(func).__name__}, not a function")
    return Reward(spec, func_name, checked(func, func_name))


def _reward_model(spec: str) -> Reward:
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise RewardSpecError(f"--reward {spec}: not a model dir (no config.json); a reward model is a "
                                  "sequence-classification checkpoint dir or hub id")
        source = str(path.resolve())
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith(".py"):
        raise RewardSpecError(f"--reward {spec}: no such file or model dir")
    elif spec.count("/") == 1:
        source = spec  # a hub id; TRL loads it
    else:
        raise RewardSpecError(
            f"--reward {spec}: unknown reward; use {', '.join(BUILTIN_REWARDS)}, FILE.py:FUNC, package.module:FUNC, "
            "or a reward model dir / hub id (org/name)"
        )
    # TRL names a reward model after the last part of its config's model id; the dir's name is that.
    return Reward(spec, source.rstrip("/").split("/")[-1], source)


def resolve_reward(spec: str) -> Reward:
    """One ``--reward`` item as a :class:`Reward` (imports user code; loads no model)."""
    if spec in BUILTIN_REWARDS:
        func = _builtin(spec)
        return Reward(spec, func.__name__, func)
    if ":" in spec and not Path(spec).expanduser().exists():
        return _function(spec)
    return _reward_model(spec)


def reward_items(specs: str | None, format_alias: bool = False) -> list[str]:
    """The items of ``--reward`` (comma list; empty: the default ``gsm8k``), plus ``format`` with
    ``--format_reward`` (the older flag, kept as an alias)."""
    items = [item.strip() for item in (specs or DEFAULT_REWARD).split(",") if item.strip()] or [DEFAULT_REWARD]
    if format_alias and "format" not in items:
        items.append("format")
    return items


def resolve_rewards(specs: str | None, format_alias: bool = False) -> list[Reward]:
    """Every item of :func:`reward_items` resolved; two rewards that would log under one name are refused."""
    rewards = [resolve_reward(item) for item in reward_items(specs, format_alias)]
    seen: dict[str, str] = {}
    for reward in rewards:
        if reward.name in seen:
            raise RewardSpecError(
                f"--reward: {seen[reward.name]} and {reward.spec} would both be logged as rewards/{reward.name}; "
                "give one of the functions another name"
            )
        seen[reward.name] = reward.spec
    return rewards


def parse_reward_weights(text: str | None, count: int) -> list[float] | None:
    """``--reward_weights 1,0.5`` as floats, one per reward (None: TRL's default, all 1)."""
    if text is None or not text.strip():
        return None
    try:
        weights = [float(item) for item in text.split(",")]
    except ValueError:
        raise RewardSpecError(f"--reward_weights {text}: not a comma list of numbers") from None
    if len(weights) != count:
        raise RewardSpecError(f"--reward_weights {text}: {len(weights)} weights for {count} rewards; give one per --reward item")
    if not all(math.isfinite(w) for w in weights):
        raise RewardSpecError(f"--reward_weights {text}: weights must be finite numbers")
    return weights
