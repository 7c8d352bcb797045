"""The one config loader (agenttuning.config): nested sections, typed overrides, errors that name file and key."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from agenttuning.config import ConfigError, load, override


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eta: float = 0.2
    name: str = "x"
    options: dict[str, Any] = Field(default_factory=dict)


class Top(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str = "runs"
    mix: Section = Section()
    steps: int | None = None


def test_yaml_and_dotted_overrides_reach_nested_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out: runs/a\nmix:\n  eta: 0.5\n")
    cfg = load(Top, path, ["mix.name=123", "mix.options.base_url=http://x", "steps=null", "mix.eta=1e-3"])
    assert cfg.out == "runs/a" and cfg.mix.eta == 1e-3 and cfg.steps is None
    assert cfg.mix.name == "123"  # a text field keeps the text YAML would have made a number
    assert cfg.mix.options == {"base_url": "http://x"}  # inside a dict field any key goes


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("mix:\n  etta: 1\n", [], r"c.yaml: unknown config key 'mix.etta'; did you mean mix.eta"),
    ("", ["mixx.eta=1"], r"unknown config key 'mixx'; did you mean mix"),
    ("", ["mix.eta=high"], r"overrides: mix.eta: Input should be a valid number"),
    ("", ["out.x=1"], r"'out' is not a config section"),
    ("", ["steps"], r"expected key=value"),
    ("- a\n- b\n", [], r"c.yaml: expected a mapping"),
    ("mix: [\n", [], r"c.yaml: invalid YAML"),
])  # fmt: skip
def test_errors_name_where_and_the_key(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(Top, path, overrides)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load(Top, tmp_path / "nope.yaml")


def test_override_keeps_unset_sections_unset():
    cfg = override(Top(), ["mix.eta=0.7"])
    assert cfg.mix.eta == 0.7 and cfg.mix.model_fields_set == {"eta"} and "out" not in cfg.model_fields_set
    assert override(cfg, []).model_dump() == cfg.model_dump()
