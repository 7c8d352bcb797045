"""Config loading: YAML + typed key=value overrides, errors that name the key, the shipped presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agenttuning.config import override
from agenttuning.train.config import ConfigError, TrainConfig, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REQUIRED = ["model=m", "agent_data=a.parquet", "general_data=g.jsonl", "max_steps=3", "batch_size=4"]


def test_overrides_are_typed_by_the_fields():
    cfg = load_config(None, [*REQUIRED, "lr=1e-5", "pack=false", "eta=0.5", "max_len=2048", "model=123",
                             "lora_target_modules=[q_proj,v_proj]", "tokenizer=null"])  # fmt: skip
    assert cfg.lr == 1e-5 and cfg.pack is False and cfg.eta == 0.5 and cfg.max_len == 2048
    assert cfg.model == "123" and cfg.lora_target_modules == ["q_proj", "v_proj"] and cfg.tokenizer is None


@pytest.mark.parametrize(
    ("override", "message"),
    [("lr=fast", "lr"), ("eta=1.5", "eta"), ("modle=x", "did you mean model"), ("pack", "key=value"),
     ("method=dora", "method")],
)  # fmt: skip
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*REQUIRED, override])


def test_inconsistent_combinations_are_refused():
    with pytest.raises(ConfigError, match="exactly one of batch_size"):
        load_config(None, [*REQUIRED, "batch_tokens=8192"])
    assert load_config(None, [*REQUIRED, "batch_size=null", "batch_tokens=8192"]).batch_tokens == 8192
    assert load_config(None, [r for r in REQUIRED if not r.startswith("batch")]).batch_size == 64
    with pytest.raises(ConfigError, match="exactly one of max_steps"):
        load_config(None, [*REQUIRED, "epochs=2"])
    with pytest.raises(ConfigError, match="general_data"):
        load_config(None, ["model=m", "agent_data=a", "max_steps=1", "batch_size=1", "eta=0.2"])
    assert load_config(None, ["model=m", "agent_data=a", "max_steps=1", "batch_size=1", "eta=1"]).eta == 1


def test_yaml_file_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\nagent_data: a\ngeneral_data: g\nepochs: 2\nbatch_size: 64\n")
    cfg = load_config(path, ["lr=2e-5"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg and again.lr == 2e-5 and again.epochs == 2
    path.write_text("model: m\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        load_config(path)


def test_override_revalidates():
    cfg = load_config(None, REQUIRED)
    assert override(cfg, ["max_steps=null", "epochs=1.5"]).epochs == 1.5
    with pytest.raises(ConfigError, match="exactly one of max_steps"):
        override(cfg, ["epochs=1.5"])


def test_a_settings_only_config_is_valid_but_cannot_train():
    settings = TrainConfig(max_steps=3)  # the pipeline's train section: no model, no data yet
    with pytest.raises(ConfigError, match="set model: .*agent_data: eta=0.2.*general_data"):
        settings.require_inputs()
    with pytest.raises(ConfigError, match="c.yaml: set model"):
        settings.require_inputs("c.yaml")
    with pytest.raises(ConfigError, match="config: set model"):  # the command's loader requires them
        load_config(None, ["max_steps=3"])


@pytest.mark.parametrize(("name", "size", "lr"), [("7b", "7b", 5e-5), ("13b", "13b", 5e-5), ("70b", "70b", 1e-5)])
def test_agentlm_presets_hold_the_paper_recipe(name, size, lr):
    cfg = load_config(CONFIGS / f"agentlm-{name}.yaml", ["agent_data=a", "general_data=g"])
    assert cfg.model == f"meta-llama/Llama-2-{size}-chat-hf"
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.weight_decay, cfg.lr) == (0.9, 0.95, 0.1, lr)
    assert (cfg.warmup_ratio, cfg.batch_size, cfg.max_len, cfg.max_grad_norm, cfg.eta) == (0.02, 64, 4096, 1.0, 0.2)
    assert cfg.method == "full" and cfg.precision == "bf16"


def test_cpu_demo_preset_is_valid():
    raw = yaml.safe_load((CONFIGS / "cpu-demo.yaml").read_text())
    assert set(raw) <= set(TrainConfig.model_fields)
    assert load_config(CONFIGS / "cpu-demo.yaml").precision == "fp32"
