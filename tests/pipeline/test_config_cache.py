"""Pipeline config parsing and the content-addressed stage folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agenttuning.pipeline.cache import StageDir, file_digest, stage_key
from agenttuning.config import ConfigError, override
from agenttuning.pipeline.config import PipelineConfigError, load_pipeline_config


def test_embedded_default_loads_and_overrides_apply() -> None:
    cfg = load_pipeline_config("default", ["mix.eta=0.5", "teacher.n=7", "train.max_steps=3", "eval.envs=[db]"])
    assert cfg.mix.eta == 0.5 and cfg.teacher.n == 7 and cfg.train.max_steps == 3 and cfg.eval.envs == ["db"]
    assert cfg.model.name == "smollm2-135m-instruct" and cfg.general.source == "stdlib"
    assert cfg.train.method == "lora" and cfg.filter.enabled and cfg.mix.eta == 0.5
    assert load_pipeline_config("scratch").model.name.startswith("scratch:")  # the smoke run keeps the tiny model


def test_bad_configs_name_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("mix:\n  etaa: 0.3\n")
    with pytest.raises(PipelineConfigError, match=r"p\.yaml: unknown config key 'mix\.etaa'; did you mean mix\.eta"):
        load_pipeline_config(bad)
    bad.write_text("train:\n  model: x\n")
    with pytest.raises(PipelineConfigError, match="train.model is set by the pipeline"):
        load_pipeline_config(bad)
    bad.write_text("train:\n  lrr: 1\n")
    with pytest.raises(PipelineConfigError, match="unknown config key 'train.lrr'; did you mean train.lr"):
        load_pipeline_config(bad)
    bad.write_text("train:\n  batch_size: 8\n  batch_tokens: 4096\n")  # caught at load, not minutes later
    with pytest.raises(PipelineConfigError, match="p.yaml: train: set exactly one of batch_size"):
        load_pipeline_config(bad)
    bad.write_text("mix: [\n")
    with pytest.raises(PipelineConfigError, match="invalid YAML"):
        load_pipeline_config(bad)
    with pytest.raises(PipelineConfigError, match="no such config file"):
        load_pipeline_config(tmp_path / "missing.yaml")
    cfg = load_pipeline_config("default")
    bad.write_text("train:\n  max_len: 512\n")
    with pytest.raises(PipelineConfigError, match=r"train.max_len is set by the pipeline \(use prepare.max_len\)"):
        load_pipeline_config(bad)
    bad.write_text("prepare:\n  pack: true\n")
    with pytest.raises(PipelineConfigError, match="prepare.pack must be false"):
        load_pipeline_config(bad)
    with pytest.raises(PipelineConfigError, match="overrides: mix.eta"):
        load_pipeline_config("default", ["mix.eta=1.5"])
    with pytest.raises(ConfigError, match="mix.eta"):
        override(cfg, ["mix.eta=1.5"])
    with pytest.raises(ConfigError, match="expected key=value"):
        override(cfg, ["mix.eta"])


def test_stage_key_depends_on_every_part() -> None:
    base = stage_key("mix", {"eta": 0.2}, {"prepare": "a"})
    assert base == stage_key("mix", {"eta": 0.2}, {"prepare": "a"})
    assert len({base, stage_key("mix", {"eta": 0.3}, {"prepare": "a"}), stage_key("mix", {"eta": 0.2}, {"prepare": "b"}),
                stage_key("mix", {"eta": 0.2}, {"prepare": "a"}, version=2),
                stage_key("train", {"eta": 0.2}, {"prepare": "a"})}) == 5
    # key order in the settings does not matter
    assert stage_key("s", {"a": 1, "b": 2}, {}) == stage_key("s", {"b": 2, "a": 1}, {})


def test_file_digest_sees_content_and_names(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.txt").write_text("x")
    first = file_digest(d)
    (d / "a.txt").write_text("y")
    assert file_digest(d) != first
    (d / "a.txt").write_text("x")
    assert file_digest(d) == first
    (d / "a.txt").rename(d / "b.txt")
    assert file_digest(d) != first


def test_a_stage_counts_as_done_only_after_its_manifest(tmp_path: Path) -> None:
    sd = StageDir.at(tmp_path, "filter", "ab" * 32)
    assert sd.path == tmp_path / "stages" / f"filter-{'ab' * 6}"
    sd.prepare(keep_partial=False)
    (sd.path / "kept.jsonl").write_text("partial")
    assert not sd.complete()
    sd.prepare(keep_partial=False)  # a non-resumable stage starts over
    assert not (sd.path / "kept.jsonl").exists()
    (sd.path / "kept.jsonl").write_text("partial")
    sd.prepare(keep_partial=True)  # a resumable one keeps its partial output
    assert (sd.path / "kept.jsonl").read_text() == "partial"
    sd.finish(settings={"x": 1}, inputs={}, result={"kept": "kept.jsonl"}, seconds=0.5)
    assert sd.complete() and sd.manifest().result == {"kept": "kept.jsonl"} and sd.manifest().key == sd.key
    # a folder whose manifest names another key (a 12-hex prefix collision) is not a hit
    other = StageDir("filter", "ab" * 6 + "cd" * 26, sd.path)
    assert not other.complete()
    json.loads(sd.manifest_path.read_text())  # valid JSON, written atomically


def test_a_first_argument_with_an_equals_sign_is_an_override_of_the_default(tmp_path: Path) -> None:
    from agenttuning.cli import _config_and_overrides

    assert _config_and_overrides("out=runs/x", ["mix.eta=0.5"]) == ("default", ["out=runs/x", "mix.eta=0.5"])
    assert _config_and_overrides("scratch", ["out=runs/x"]) == ("scratch", ["out=runs/x"])
    odd = tmp_path / "a=b.yaml"  # a real file whose name holds '=' is still a config file
    odd.write_text("name: x\n")
    assert _config_and_overrides(str(odd), []) == (str(odd), [])
