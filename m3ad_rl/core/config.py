"""Config loading: a YAML file, then dotted ``key=value`` overrides, validated by a pydantic model.

OmegaConf merges the file and the overrides (values are read as YAML: ``1``, ``true``, ``[a, b]``);
pydantic validates. Every error names the full dotted key, the value given, and what is allowed.
Each field is documented once, where its model declares it.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key and what is allowed, ``todo`` what to do."""

    def __init__(self, message: str, todo: str = "fix the key named (its allowed values are listed)"):
        super().__init__(message)
        self.todo = todo


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"config {path} does not exist", "check the --config path") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a folder", "give a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}", "check the path and its permissions") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text ({e.reason} at byte {e.start})",
                          "save it as UTF-8") from None  # fmt: skip
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {' '.join(str(e).split())}", "fix the YAML") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level, not a {type(loaded).__name__}",
                          "write it as `key: value` lines (see the shipped configs/)")  # fmt: skip
    return loaded or {}


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    root: str = "",
    sections: dict[str, str | Path] | None = None,
) -> M:
    """Build ``model`` from an optional YAML file plus ``key=value`` overrides.

    ``root`` is a prefix for messages (``reward.`` makes errors say ``reward.weights.accuracy``).
    ``sections`` merges whole files under a key, after ``path`` and before the overrides, e.g.
    ``{"reward": "configs/rewards/preset_b.yaml"}`` for ``train rcrl --reward-config``.
    """
    data: dict[str, Any] = _read_yaml(path) if path is not None else {}
    # the field defaults that differ from their class's defaults come first: a file or override that
    # sets one nested key (``rollout.sampling.max_new_tokens``) must not reset its siblings (``n: 4``)
    base = _default_layer(model)
    layers = [OmegaConf.create(base), OmegaConf.create(data)] if base else [OmegaConf.create(data)]
    for key, file in (sections or {}).items():
        layers.append(OmegaConf.create({key: _read_yaml(file)}))
    if overrides:
        for item in overrides:
            if "=" not in item or not item.split("=", 1)[0].strip():
                raise ConfigError(f"override {item!r} must look like key=value")
    if len(layers) > 1 or overrides:  # (merging also when only the default layer was added)
        try:
            if overrides:
                layers.append(OmegaConf.from_dotlist(list(overrides)))
            data = OmegaConf.to_container(OmegaConf.merge(*layers), resolve=True)  # type: ignore[assignment]
        except (OmegaConfBaseException, yaml.YAMLError, ValueError) as e:
            todo = "give key=value, the value as YAML (quote it if it holds : [ { or #)"
            raise ConfigError(f"bad override: {' '.join(str(e).split())}", todo) from None
    return validate(model, data, root=root)


def _default_layer(model: type[BaseModel]) -> dict[str, Any]:
    """{field: the keys where its default instance differs from its class's defaults}, recursively."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.is_required():
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            own = default.model_dump(mode="json")
            try:
                plain = type(default)().model_dump(mode="json")
            except ValidationError:
                plain = {}
            diff = _diff(own, plain)
            nested = _default_layer(type(default))
            merged = {**nested, **diff} if nested or diff else {}
            if merged:
                out[name] = merged
    return out


def _diff(a: dict, b: dict) -> dict:
    out = {}
    for k, v in a.items():
        if isinstance(v, dict) and isinstance(b.get(k), dict):
            if sub := _diff(v, b[k]):
                out[k] = sub
        elif b.get(k, object()) != v:
            out[k] = v
    return out


def validate(model: type[M], data: Any, *, root: str = "") -> M:
    """``model.model_validate(data)`` with errors rewritten for people; every number must be finite (a NaN
    weight or learning rate would run to the end and report nonsense)."""
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(_explain(model, err, root) for err in e.errors())) from None
    bad = list(_non_finite(obj, root))
    if bad:
        raise ConfigError("; ".join(f"{k}: must be a finite number (got {v})" for k, v in bad))
    return obj


def _non_finite(value: Any, key: str) -> typing.Iterator[tuple[str, float]]:
    """(dotted key, value) of every NaN or infinite float inside a config."""
    import math

    if isinstance(value, float):
        if not math.isfinite(value):
            yield key.rstrip("."), value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _non_finite(getattr(value, name), f"{key}{name}.")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{key}{k}.")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{key}{i}.")


def _explain(model: type[BaseModel], err: dict, root: str) -> str:
    loc = [str(p) for p in err["loc"]]
    key = root + ".".join(loc)
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else "?"
        return f"{key}: unknown key; allowed keys here: {allowed}"
    if err["type"] == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{key}: {value!r} is not allowed; allowed values: {allowed}"
    return f"{key}: {err['msg']} (got {value!r})"


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The pydantic model found by walking field names (for listing allowed keys)."""
    current: Any = model
    for part in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        f = current.model_fields.get(part)
        if f is None:
            return None
        current = f.annotation
        for arg in typing.get_args(current) or ():  # Optional[Model] and friends
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None
