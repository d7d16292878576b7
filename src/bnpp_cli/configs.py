"""Typed configs: ONE recursive (de)serialisation for every config dataclass bnpp stores.

    to_dict(config)           -> plain JSON types (nested dataclasses become dicts, tuples lists)
    from_dict(Config, d)      -> Config, recursively, strict: an unknown key, a missing required key
                                 or a value of the wrong type raises ConfigError naming the path

Every stored config (the run directory's config.json, the deploy halves' metadata) goes through
these two functions; nobody rebuilds a config with ``Config(**d)``. Defaults of fields that a file
lacks are filled by the dataclass itself, so a file written before a field existed still loads.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

from .errors import ConfigError

T = TypeVar("T")


def to_dict(config: Any) -> Any:
    """A config dataclass (or a value inside one) as plain JSON types."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {str(k): to_dict(v) for k, v in config.items()}
    return config


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build ``cls`` from ``data``; ConfigError names the first bad key as a dotted path."""
    label = cls.__name__.removesuffix("Config").lower()
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown {label} config keys {unknown}; valid: {', '.join(sorted(fields))}")
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: {label} config is missing keys {missing}")
    kwargs = {name: _value(hints[name], data[name], f"{where}.{name}") for name in fields if name in data}
    return cls(**kwargs)


def _value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where}: null is not allowed")
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _value(option, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
