"""One way to declare a config section, and one validator for all of them.

A section is a frozen pydantic model (:class:`Section`): unknown keys, ill-typed values (strict:
no ``"3"`` for 3, no ``true`` for 1) and out-of-range values are refused with ONE line naming the
key, the value and what is allowed, never a pydantic dump::

    class CacheSection(Section):
        shard_mb: int = Field(1024, ge=1)

    CacheSection(shard_mb=-1)
    # ConfigError: CacheSection.shard_mb: expected int >= 1, got int -1

A rule that spans fields raises :class:`FieldError` from a ``model_validator`` naming the field;
the message then reads the same way. The library's configs (``TrainConfig``,
``SyntheticConfig``, ``VideoIngestConfig``) are sections, and the pipeline's params.yaml is a
section of sections, so each knob is declared once and validated once.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any, Literal, Mapping, TypeVar

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator
from pydantic.fields import FieldInfo

from psta.errors import ConfigError

T = TypeVar("T")


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# YAML and JSON give lists; sections hold tuples (hashable, immutable like the section itself)
Seq = Annotated[tuple[T, ...], BeforeValidator(_list_to_tuple)]
Pair = Annotated[tuple[T, T], BeforeValidator(_list_to_tuple)]


class FieldError(ConfigError):
    """A value that breaks a rule involving other fields; raised inside a section's validator."""

    def __init__(self, field: str, value: Any, expected: str):
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field}: expected {expected}, got {_value(value)}")


class Section(BaseModel):
    """A frozen, strict config section; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise ConfigError(describe(err, type(self), prefix=self._prefix())) from None

    # tell pydantic this __init__ only wraps its own: nested sections are then validated as part
    # of their parent (errors keep the full key, train.lr) instead of through this __init__
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def _prefix(cls) -> str:
        """How keys are named in messages: ``TrainConfig.lr``; a params file names them itself."""
        return cls.__name__

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, values: Any) -> Any:
        return {} if values is None else values  # `train:` with nothing under it in YAML

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None):
        """Build from a mapping (a params.yaml section, a checkpoint's saved config)."""
        if values is not None and not isinstance(values, Mapping):
            raise ConfigError(f"{cls._prefix()}: expected a mapping of keys, got {_value(values)}")
        return cls(**dict(values or {}))

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, strings, bools and lists (JSON- and weights_only-safe)."""
        return self.model_dump(mode="json")


# ------------------------------------------------------------------------ one-line messages
def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple):
        value = list(value)  # as params.yaml writes it
    return f"{type(value).__name__} {value!r}"


def _unwrap(tp: Any, metadata: list) -> tuple[Any, list]:
    """Strip Annotated[...] layers, collecting their constraints."""
    while typing.get_origin(tp) is Annotated:
        tp, *extra = typing.get_args(tp)
        for item in extra:
            metadata = [*metadata, *(item.metadata if isinstance(item, FieldInfo) else [item])]
    return tp, metadata


def _is_section(tp: Any) -> bool:
    return inspect.isclass(tp) and issubclass(tp, BaseModel)


def _field_at(model: type, loc: tuple) -> tuple[Any, list, tuple]:
    """The annotation and constraints at an error location, and the part of loc that names it."""
    tp, metadata, named = model, [], ()
    for part in loc:
        tp, metadata = _unwrap(tp, metadata)
        if isinstance(part, str) and _is_section(tp) and part in tp.model_fields:
            info = tp.model_fields[part]
            tp, metadata = info.annotation, list(info.metadata)
        elif isinstance(part, int) and typing.get_origin(tp) in (tuple, list):
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            tp, metadata = args[min(part, len(args) - 1)], []
        else:
            break  # a union member's tag: the error is about the value named so far
        named = (*named, part)
    tp, metadata = _unwrap(tp, metadata)
    return tp, metadata, named


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if Ellipsis in args or origin is list:
            return f"list of {_type_name(args[0])}"
        return f"a list of {len(args)} {_type_name(args[0])}s"
    if isinstance(tp, types.UnionType) or origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if _is_section(tp):
        return "a mapping of keys"
    return getattr(tp, "__name__", str(tp))


def _bounds(metadata: list) -> str:
    """"in [0, 1]", ">= 1", "in (0, 1)" from annotated_types constraints."""
    low = high = None
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low = ("[", ">=", m.ge)
        elif isinstance(m, annotated_types.Gt):
            low = ("(", ">", m.gt)
        elif isinstance(m, annotated_types.Le):
            high = ("]", "<=", m.le)
        elif isinstance(m, annotated_types.Lt):
            high = (")", "<", m.lt)
    if low and high:
        return f"in {low[0]}{low[2]}, {high[2]}{high[0]}"
    return " ".join(f"{b[1]} {b[2]}" for b in (low, high) if b)


def _expected(tp: Any, metadata: list) -> str:
    bounds = _bounds(metadata)
    return f"{_type_name(tp)} {bounds}" if bounds else _type_name(tp)


def _join(prefix: str, parts: tuple) -> str:
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return f"{prefix}.{key}" if prefix and key else prefix or key


def describe(err: ValidationError, model: type, prefix: str = "") -> str:
    """One line for every problem of a ValidationError: key, value, what is allowed."""
    unknown: dict[tuple, list[str]] = {}
    lines: list[str] = []
    for e in err.errors():
        loc = tuple(e["loc"])
        if e["type"] in ("missing", "too_short", "too_long") and loc and isinstance(loc[-1], int):
            loc = loc[:-1]  # a list of the wrong length: about the list, not an item
        if e["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        tp, metadata, named = _field_at(model, loc)
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            line = f"{_join(prefix, (*named, cause.field))}: expected {cause.expected}, got {_value(cause.value)}"
        elif e["type"] in ("value_error", "assertion_error") and cause is not None:
            line = f"{_join(prefix, named)}: expected {cause}, got {_value(e['input'])}"
        else:
            line = f"{_join(prefix, named)}: expected {_expected(tp, metadata)}, got {_value(e['input'])}"
        if line not in lines:
            lines.append(line)
    for parent, keys in unknown.items():
        tp, _, _ = _field_at(model, parent)
        where = _join(prefix, parent)
        accepted = ", ".join(sorted(tp.model_fields)) if _is_section(tp) else "?"
        if where:
            names = ", ".join(_join(where, (k,)) for k in sorted(keys))
            lines.insert(0, f"unknown key(s) {names}; '{where}' accepts: {accepted}")
        else:
            lines.insert(0, f"unknown section(s) {', '.join(sorted(keys))}; known sections: {accepted}")
    return "; ".join(lines)


__all__ = ["Section", "FieldError", "Seq", "Pair", "describe"]
