"""``lora_layers``: LoRA in the top decoder layers only, and backward that stops below them."""

from __future__ import annotations

import pytest
import torch

from agenttuning.train.config import ConfigError, TrainConfig
from agenttuning.train.model import lora_targets
from tests.tiny_models import tiny_llama


def _config(**kw) -> TrainConfig:
    return TrainConfig(model="m", agent_data="a", general_data="g", max_steps=1, method="lora", **kw)


def _peft(layers, n_layers: int = 4):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(200, layers=n_layers)
    targets, chosen = lora_targets(model, "all-linear", layers)
    return get_peft_model(model, LoraConfig(r=4, target_modules=targets, layers_to_transform=chosen)), chosen


def test_top_k_adapts_exactly_the_top_k_layers_every_linear_in_them():
    model, chosen = _peft(2)
    assert chosen == [2, 3]
    adapted = {n.split(".layers.")[1].split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"2", "3"}
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head" in n for n, p in model.named_parameters() if p.requires_grad)


def test_explicit_indices_and_none():
    model = tiny_llama(200, layers=4)
    assert lora_targets(model, ["q_proj"], [0, 3, 3]) == (["q_proj"], [0, 3])
    assert lora_targets(model, "all-linear", None) == ("all-linear", None)


def test_backward_never_reaches_the_frozen_layers_below():
    model, _ = _peft(1)
    reached: list[int] = []
    for i, layer in enumerate(model.base_model.model.model.layers):
        layer.register_full_backward_hook(lambda m, gi, go, i=i: reached.append(i))
    ids = torch.randint(0, 200, (1, 12))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert reached == [3]  # the adapted top layer only: autograd recorded no graph below it


@pytest.mark.parametrize("layers", [5, [4], [-1]])
def test_layers_the_model_lacks_are_clear_errors(layers):
    model = tiny_llama(200, layers=4)
    if layers == [-1]:
        with pytest.raises(ValueError, match="lora_layers"):
            _config(lora_layers=layers)
        return
    with pytest.raises(ConfigError, match="lora_layers"):
        lora_targets(model, "all-linear", layers)


def test_zero_is_refused_at_config_time():
    with pytest.raises(ValueError, match="positive count"):
        _config(lora_layers=0)
