"""The one config loader: YAML in, dotted ``key=value`` overrides, a validated pydantic model out.

Every command's config (the pipeline's, the trainer's, any stage's) is a pydantic model and is read by
:func:`load`; :func:`override` applies ``key=value`` arguments to a model already built. The rules are the same
everywhere:

- a YAML file must hold a mapping; unknown keys are errors naming the file, the dotted key and the nearest known
  keys (pydantic ``extra="forbid"`` models);
- an override is ``section.key=value`` with the value parsed as YAML (``lr=1e-5``, ``pack=false``,
  ``max_steps=null``, ``lora_target_modules=[q_proj,v_proj]``), except that a field which takes text keeps the raw
  text (``model=123`` is the path ``123``) and a number field gets YAML 1.1's strings like ``1e-5`` as numbers;
- every error is a :class:`ConfigError` naming where (the file, or ``overrides``) and the key.

>>> from pydantic import BaseModel
>>> class Opt(BaseModel):
...     lr: float = 1e-3
...     name: str = "x"
>>> override(Opt(), ["lr=1e-5", "name=123"])
Opt(lr=1e-05, name='123')
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "load", "override", "read_yaml_mapping"]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used: unknown key, bad value, or an inconsistent combination; names where."""


def read_yaml_mapping(path: str | os.PathLike[str], text: str | None = None) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty file: ``{}``); ConfigError naming the file otherwise."""
    p = Path(path)
    if text is None:
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such config file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: cannot read the config: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (directly or as ``Model | None``), else None."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    for a in (annotation, *args):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _accepts(annotation: Any, kinds: tuple[type, ...]) -> bool:
    if annotation in kinds:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(a, kinds) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, kinds) for a in typing.get_args(annotation))
    return False


def _check_keys(model: type[BaseModel], data: dict[str, Any], where: str, prefix: str = "") -> None:
    """Unknown keys anywhere in the nested sections, with the nearest known ones."""
    forbid = model.model_config.get("extra") == "forbid"
    for key, value in data.items():
        fields = model.model_fields
        if key not in fields:
            if not forbid:
                continue
            close = difflib.get_close_matches(str(key), list(fields), n=3)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(f"{where}: unknown config key {prefix + str(key)!r}{hint}")
        sub = _model_of(fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            _check_keys(sub, value, where, f"{prefix}{key}.")


def _parse_value(annotation: Any, raw: str) -> Any:
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw
    takes_text, takes_number = _accepts(annotation, (str,)), _accepts(annotation, (int, float))
    if isinstance(value, (int, float, bool)) and takes_text and not takes_number:
        return raw  # model=123 means the path '123'
    if isinstance(value, str) and takes_number:
        return raw  # pydantic turns '1e-5' (a string to YAML 1.1) into the float
    return value


def _set(model: type[BaseModel], data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. lr=1e-5 or mix.eta=0.5)")
    *parents, leaf = [k.replace("-", "_") for k in key.split(".")]  # lora-r=8 means lora_r=8
    node, node_model = data, model
    for i, p in enumerate(parents):
        sub, is_section = None, False
        if node_model is not None:
            _check_keys(node_model, {p: None}, "overrides", ".".join(parents[:i]) + "." if i else "")
            field = node_model.model_fields.get(p)
            sub = _model_of(field.annotation) if field is not None else None
            is_section = sub is not None or (field is not None and typing.get_origin(field.annotation) is dict)
        child = node.get(p)
        if child is None and is_section:  # a section (or a mapping field) not given yet
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parents[: i + 1])!r} is not a config section")
        node, node_model = child, sub
    annotation: Any = Any
    if node_model is not None:
        _check_keys(node_model, {leaf: None}, "overrides", ".".join(parents) + "." if parents else "")
        field = node_model.model_fields.get(leaf)
        annotation = field.annotation if field is not None else Any
    node[leaf] = _parse_value(annotation, raw)


def _validate(model: type[M], data: dict[str, Any], where: str) -> M:
    _check_keys(model, data, where)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc, msg = ".".join(str(x) for x in err["loc"]), err["msg"].removeprefix("Value error, ")
            msgs.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError(f"{where}: " + "; ".join(msgs)) from None


def load(model: type[M], path: str | os.PathLike[str] | None = None, overrides: typing.Sequence[str] = (), *,
         text: str | None = None, where: str | None = None) -> M:  # fmt: skip
    """Read ``path`` (YAML; None: start from the model's defaults), apply ``overrides``, validate as ``model``.

    ``text`` gives the YAML instead of reading ``path`` (an embedded config), ``where`` names it in errors.
    """
    name = where or (str(path) if path is not None else "config")
    data = read_yaml_mapping(path if path is not None else name, text) if (path is not None or text) else {}
    _check_keys(model, data, name)
    for item in overrides:
        _set(model, data, item)
    return _validate(model, data, "overrides" if overrides else name)


def override(config: M, overrides: typing.Sequence[str] = ()) -> M:
    """A new config with ``key=value`` overrides applied and everything re-validated together.

    Only the fields that were set are carried (``exclude_unset``), so a section left at its default stays a default
    and which fields a user gave stays known (the pipeline refuses train fields it sets itself).
    """
    data = config.model_dump(exclude_unset=True)
    for item in overrides:
        _set(type(config), data, item)
    return _validate(type(config), data, "overrides" if overrides else "config")
