"""Stage 2 of AgentTuning: hybrid instruction tuning of any Hugging Face causal LM (full, LoRA, QLoRA).

    from agenttuning.train import load_config, train
    result = train(load_config("configs/cpu-demo.yaml", ["max_steps=20"]))

See ``docs/train.md`` and :mod:`agenttuning.train.trainer`.
"""

from agenttuning.train.config import ConfigError, TrainConfig, load_config, save_config

__all__ = ["ConfigError", "StepEvent", "TrainConfig", "TrainResult", "load_config", "save_config", "train"]


def __getattr__(name: str):  # the trainer imports torch: load it only when asked for
    if name in ("train", "TrainResult", "StepEvent"):
        from agenttuning.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'agenttuning.train' has no attribute {name!r}")
