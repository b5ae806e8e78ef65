"""Hyperparameter declarations as values, and ``--set NAME=VALUE`` overrides that fix or narrow them.

A ``ParamSpec`` is one Keras Tuner declaration (``hp.Int``, ``hp.Float``, ``hp.Choice``,
``hp.Boolean``, ``hp.Fixed``) held as data, so every backend can read the same space: Keras Tuner by
declaring it, Optuna by mapping it to a distribution. Overrides are checked against the space as
declared and turned into narrower specs; nothing a space cannot build gets through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from search_spaces._errors import SpaceError

KINDS = ("Int", "Float", "Choice", "Boolean", "Fixed")
TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class ParamSpec:
    """One declared hyperparameter: its Keras Tuner kind, name, and the keyword arguments of the call."""

    kind: str
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    # Where it is declared under ``hp.conditional_scope``: when it applies, e.g. "optimizer=adamw".
    condition: str = ""
    # The same as (parent name, parent values) pairs, outermost first: what ``declare`` scopes it in.
    parents: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @classmethod
    def from_keras_tuner(cls, hp_object: Any) -> ParamSpec:
        """The spec of a Keras Tuner hyperparameter object (as found in ``HyperParameters.space``)."""
        config = dict(hp_object.get_config())
        config.pop("conditions", None)
        name = config.pop("name")
        parents = tuple((c.name, tuple(c.values)) for c in hp_object.conditions)
        return cls(type(hp_object).__name__, name, config, _condition(parents), parents)

    def declare(self, hp: Any) -> Any:
        """Declare this hyperparameter on a Keras-Tuner-like ``hp`` object, under its conditions (their
        parents declared already), and return its value."""
        with contextlib.ExitStack() as scopes:
            for parent, values in self.parents:
                scopes.enter_context(hp.conditional_scope(parent, list(values)))
            return getattr(hp, self.kind)(self.name, **self.config)

    @property
    def default(self) -> Any:
        """The value a space builds when nobody chose one (Keras Tuner's rule: ``min_value`` if unset)."""
        c = self.config
        if self.kind == "Fixed":
            return c["value"]
        if c.get("default") is not None:
            return c["default"]
        if self.kind == "Boolean":
            return False
        return c["values"][0] if self.kind == "Choice" else c["min_value"]

    def allows(self, value: Any) -> bool:
        """Whether this hyperparameter, as declared (or narrowed by ``--set``), can take ``value``."""
        c = self.config
        if self.kind == "Choice":
            return value in c["values"]
        if self.kind == "Fixed":
            return bool(value == c["value"])
        if self.kind == "Boolean":
            return isinstance(value, bool)
        return _is_number(value) and _in_range(self, value)

    def describe(self) -> str:
        """A short human description: ``choice of 14, 20, 32 (default 20)``, ``float 1e-4..0.1 log``."""
        c = self.config
        if self.kind == "Fixed":
            return f"fixed {c['value']!r}"
        if self.kind == "Boolean":
            return f"true or false (default {str(c.get('default', False)).lower()})"
        if self.kind == "Choice":
            text = "choice of " + ", ".join(_fmt(v) for v in c["values"])
        else:
            text = f"{self.kind.lower()} {_fmt(c['min_value'])}..{_fmt(c['max_value'])}"
            if c.get("step"):
                text += f" step {_fmt(c['step'])}"
            if c.get("sampling") == "log":
                text += " log"
        if c.get("default") is not None:
            text += f" (default {_fmt(c['default'])})"
        if self.condition:
            text += f", with {self.condition}"
        return text


class Declarations:
    """Keras Tuner's declaration calls (``hp.Int``, ``hp.Float``, ``hp.Choice``, ``hp.Boolean``,
    ``hp.Fixed``, ``conditional_scope``) without Keras Tuner, so a space is read without a framework.

    Every declaration is recorded in ``specs``, with its condition. Active ones are valued by
    ``value(spec)``: here the declared default (what the space builds when nobody chose), in a
    subclass what a sampler draws. Inside a scope whose condition does not hold, a declaration is
    inactive and returns None, as in Keras Tuner.
    """

    def __init__(self) -> None:
        self.specs: list[ParamSpec] = []
        self.values: dict[str, Any] = {}
        self._scopes: list[tuple[str, list[Any]]] = []

    def value(self, spec: ParamSpec) -> Any:
        return spec.default

    @contextlib.contextmanager
    def conditional_scope(self, parent_name: str, parent_values: Any) -> Iterator[None]:
        allowed = list(parent_values) if isinstance(parent_values, (list, tuple)) else [parent_values]
        self._scopes.append((parent_name, allowed))
        try:
            yield
        finally:
            self._scopes.pop()

    def _declare(self, kind: str, name: str, config: dict[str, Any], parent_name: str | None = None,
                 parent_values: Any = None) -> Any:
        if parent_name is not None:  # Keras Tuner's one-declaration form of a scope
            with self.conditional_scope(parent_name, parent_values):
                return self._declare(kind, name, config)
        parents = tuple((parent, tuple(allowed)) for parent, allowed in self._scopes)
        spec = ParamSpec(kind, name, {k: v for k, v in config.items() if v is not None}, _condition(parents),
                         parents)
        self.specs.append(spec)
        if not all(self.values.get(parent) in allowed for parent, allowed in self._scopes):
            return None
        if name not in self.values:
            self.values[name] = self.value(spec)
        return self.values[name]

    # Keras Tuner's signatures.

    def Int(self, name, min_value, max_value, step=None, sampling="linear", default=None,  # noqa: N802
            parent_name=None, parent_values=None):
        return self._declare("Int", name, {"min_value": min_value, "max_value": max_value, "step": step,
                                           "sampling": sampling, "default": default},
                             parent_name, parent_values)

    def Float(self, name, min_value, max_value, step=None, sampling="linear", default=None,  # noqa: N802
              parent_name=None, parent_values=None):
        return self._declare("Float", name, {"min_value": min_value, "max_value": max_value,
                                             "step": step, "sampling": sampling, "default": default},
                             parent_name, parent_values)

    def Choice(self, name, values, ordered=None, default=None, parent_name=None,  # noqa: N802
               parent_values=None):
        return self._declare("Choice", name, {"values": list(values), "ordered": ordered,
                                              "default": default}, parent_name, parent_values)

    def Boolean(self, name, default=False, parent_name=None, parent_values=None):  # noqa: N802
        return self._declare("Boolean", name, {"default": default}, parent_name, parent_values)

    def Fixed(self, name, value, parent_name=None, parent_values=None):  # noqa: N802
        return self._declare("Fixed", name, {"value": value}, parent_name, parent_values)

    def get(self, name: str) -> Any:
        return self.values[name]


def declared(declare: Callable[[Any], Any]) -> list[ParamSpec]:
    """The hyperparameters a space's ``declare(hp)`` declares, in order, read without Keras."""
    hp = Declarations()
    declare(hp)
    return hp.specs


def _condition(parents: Iterable[tuple[str, Iterable[Any]]]) -> str:
    """Conditions as read: "optimizer=adam,sgd and ..."."""
    return " and ".join(f"{parent}={','.join(_fmt(v) for v in values)}" for parent, values in parents)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """Turn ``["depth=20", "optimizer=adam,sgd"]`` into ``{"depth": "20", ...}``."""
    parsed: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SpaceError(f"--set expects NAME=VALUE, got {item!r}")
        parsed[name.strip()] = value.strip()
    return parsed


def resolve_overrides(
    declared: Iterable[ParamSpec], overrides: Mapping[str, str]
) -> dict[str, ParamSpec]:
    """Check ``overrides`` against the declared space; return the narrowed spec of each overridden name.

    Values are ``v`` (fix), ``a..b`` (narrow a numeric range) or ``a,b,c`` (a subset of choices).
    """
    specs = {spec.name: spec for spec in declared}
    resolved: dict[str, ParamSpec] = {}
    for name, text in overrides.items():
        if name not in specs:
            raise SpaceError(
                f"unknown hyperparameter {name!r}; choose one of: {', '.join(sorted(specs))}"
            )
        try:
            resolved[name] = narrow(specs[name], text)
        except SpaceError as err:
            raise SpaceError(f"--set {name}={text}: {err}") from None
    return resolved


def narrow(spec: ParamSpec, text: str) -> ParamSpec:
    """The spec that ``--set NAME=text`` leaves of ``spec``, under the same conditions; raises
    ``SpaceError`` outside the space."""
    if ".." in text:
        low, _, high = text.partition("..")
        narrowed = _narrow_range(spec, low.strip(), high.strip())
    elif "," in text:
        narrowed = _narrow_choices(spec, [part.strip() for part in text.split(",") if part.strip()])
    else:
        narrowed = ParamSpec("Fixed", spec.name, {"value": _check_value(spec, text)})
    return dataclasses.replace(narrowed, condition=spec.condition, parents=spec.parents)


def _allowed(spec: ParamSpec) -> str:
    c = spec.config
    if spec.kind == "Choice":
        return "one of " + ", ".join(_fmt(v) for v in c["values"])
    if spec.kind == "Boolean":
        return "true or false"
    if spec.kind == "Fixed":
        return f"{_fmt(c['value'])} (fixed by the space)"
    text = f"within {_fmt(c['min_value'])}..{_fmt(c['max_value'])}"
    if c.get("step"):
        text += f" in steps of {_fmt(c['step'])}"
    return text


def _convert(text: str, like: Any) -> Any:
    """Parse ``text`` as the type of ``like`` (bool, int, float or str)."""
    try:
        if isinstance(like, bool):
            word = text.lower()
            if word in TRUE_WORDS | FALSE_WORDS:
                return word in TRUE_WORDS
            raise ValueError(text)
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
    except ValueError:
        raise SpaceError(f"{text!r} is not a valid {type(like).__name__}") from None
    return text


def _check_value(spec: ParamSpec, text: str) -> Any:
    """Parse one value and check the space can build it."""
    c = spec.config
    like = (c["values"][0] if spec.kind == "Choice" else True if spec.kind == "Boolean"
            else c["value"] if spec.kind == "Fixed" else 0 if spec.kind == "Int" else 0.0)
    value = _convert(text, like)
    if not spec.allows(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise SpaceError(f"{spec.name} must be {_allowed(spec)}")
    return value


def _in_range(spec: ParamSpec, value: float) -> bool:
    c = spec.config
    low, high, step = c["min_value"], c["max_value"], c.get("step")
    tol = 1e-9 * max(abs(low), abs(high), 1e-12)
    if not low - tol <= value <= high + tol:
        return False
    if step:
        ratio = (value - low) / step
        return abs(ratio - round(ratio)) < 1e-6
    return True


def _narrow_range(spec: ParamSpec, low_text: str, high_text: str) -> ParamSpec:
    c = spec.config
    if spec.kind in ("Int", "Float"):
        low, high = _check_value(spec, low_text), _check_value(spec, high_text)
        if low > high:
            raise SpaceError(f"empty range {low_text}..{high_text}")
        default = c.get("default")
        if default is None or not low <= default <= high:
            default = low
        return ParamSpec(spec.kind, spec.name, {**c, "min_value": low, "max_value": high,
                                                "default": default})
    if spec.kind == "Choice" and all(_is_number(v) for v in c["values"]):
        low, high = float(low_text), float(high_text)
        kept = [v for v in c["values"] if low <= v <= high]
        if not kept:
            raise SpaceError(f"no value of {spec.name} in {low_text}..{high_text}; "
                             f"{spec.name} must be {_allowed(spec)}")
        return _narrow_choices(spec, [str(v) for v in kept])
    raise SpaceError(f"{spec.name} takes no range; it must be {_allowed(spec)}")


def _narrow_choices(spec: ParamSpec, texts: list[str]) -> ParamSpec:
    values = list(dict.fromkeys(_check_value(spec, text) for text in texts))
    if spec.kind == "Boolean" and len(values) == 2:
        return spec
    if len(values) == 1:
        return ParamSpec("Fixed", spec.name, {"value": values[0]})
    return _choice(spec, values)


def _choice(spec: ParamSpec, values: list[Any]) -> ParamSpec:
    default = spec.config.get("default")
    return ParamSpec("Choice", spec.name, {
        "values": values,
        "default": default if default in values else values[0],
    })


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
