"""The one flat training config (ARCHITECTURE habit 7): YAML in, ``key=value`` overrides, the resolved config saved.

Every knob of stage 2, hybrid instruction tuning (AgentTuning §2.2 and the training setup of §3.1), is a field of
:class:`TrainConfig`; nothing hides in a nested object. :func:`load_config` reads a YAML preset (``configs/``) and
applies ``key=value`` overrides (through the one loader, :mod:`agenttuning.config`), each value parsed as YAML (``lr=1e-5``, ``pack=false``, ``max_steps=null``,
``lora_target_modules=[q_proj,v_proj]``) and then type-checked by pydantic, so a typo in a key or a value is an
error naming the key. :func:`save_config` writes the resolved config as YAML beside the checkpoints and the final
model, so every artifact says how it was made.

    >>> cfg = TrainConfig(model="m", agent_data="a.parquet", general_data="g.parquet", output_dir="out",
    ...                   max_steps=10)
    >>> from agenttuning.config import override
    >>> override(cfg, ["lr=1e-5", "pack=false", "lora_target_modules=[q_proj,v_proj]"]).lr
    1e-05

Batch and length of training — what the fields mean:

* ``batch_size`` is the **global** batch in examples per optimizer step (the paper's "batch size 64"), summed over
  all processes and accumulation micro-batches; ``batch_tokens`` instead draws examples until their tokens reach
  that many. Exactly one of them is set (neither: ``batch_size=64``). ``grad_accum`` does not change the batch,
  only how it is cut: the batch's rows are dealt to ``num_processes * grad_accum`` micro-batches, so more
  accumulation means less memory per forward.
* ``max_steps`` or ``epochs`` (exactly one). **An epoch under eta mixing** is ``ceil(n_agent / eta)`` draws — the
  draws in which the agent data (the scarce source the mixture is built around) is seen once in expectation, and
  about ``n_agent * (1 - eta) / eta`` general examples with it (see :func:`agenttuning.data.mix.epoch_length`);
  with ``eta = 0`` it is one pass over the general data. ``n_agent`` counts the training split (after
  ``eval_fraction`` is held out). ``epochs`` may be fractional.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agenttuning.config import ConfigError, load
from agenttuning.jsonl import write_text_atomic

Method = Literal["full", "lora", "qlora"]
Precision = Literal["bf16", "fp16", "fp32"]
ReportTo = Literal["none", "tensorboard", "wandb"]
LossImpl = Literal["auto", "fused", "checkpoint", "full"]


class TrainConfig(BaseModel):
    """Hybrid instruction tuning of any Hugging Face causal LM (AgentTuning §2.2, §3.1). Fields are flat."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- model -------------------------------------------------------------------------------------------------
    model: str | None = Field(None, description="HF hub id or local path of the causal LM to tune (required to "
                              "train; the pipeline sets it).")  # fmt: skip
    tokenizer: str | None = Field(None, description="Tokenizer id/path; default: the model's.")
    chat_template: str | None = Field(
        None, description="Jinja chat template (a .jinja file path or the template text) saved with the final "
        "model; default: the tokenizer's own. Must match the template the data was rendered with."
    )  # fmt: skip
    attn_implementation: str | None = Field(
        None, description="'sdpa' (default when None), 'eager', 'flash_attention_2' (GPU; micro-batches are then "
        "flattened to one varlen row)."
    )  # fmt: skip
    # --- data --------------------------------------------------------------------------------------------------
    agent_data: str | None = Field(None, description="Prepared agent examples: parquet/JSONL (or a directory) with "
                                   "input_ids and labels (-100 = no loss).")  # fmt: skip
    general_data: str | None = Field(None, description="Prepared general-chat examples, same layout.")
    eta: float = Field(0.2, ge=0.0, le=1.0, description="Probability a draw is an agent example (paper: 0.2).")
    max_len: int = Field(4096, ge=2, description="Tokens per packed row / longest example (paper: 4096).")
    length_policy: Literal["truncate_turns", "drop"] = Field(
        "truncate_turns", description="Examples longer than max_len: cut after the last assistant turn that fits "
        "(needs a turn_ends column; without it they are dropped), or drop."
    )  # fmt: skip
    pack: bool = Field(True, description="Best-fit-decreasing packing into rows of max_len (padding-free).")
    prefix_sharing: bool = Field(
        True, description="Examples of a row that begin alike share one copy of their prefix (a trie laid out in "
        "max_len layout tokens); same losses and gradients. Off by itself for flash-attention, sliding windows, "
        "pack=false, or if a probe disagrees (docs/train.md)."
    )  # fmt: skip
    # --- method ------------------------------------------------------------------------------------------------
    method: Method = "full"
    lora_r: int = Field(16, ge=1)
    lora_alpha: float = 32.0
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | str = Field("all-linear", description="PEFT target_modules.")
    lora_layers: int | list[int] | None = Field(
        None, description="LoRA only in these decoder layers: an int k means the top k, a list the layer indices; "
        "None: every layer. Below the lowest adapted layer nothing needs a gradient, so backward stops there "
        "(top 8 of 30 layers trains ~2x faster per token on CPU; docs/train.md)."
    )  # fmt: skip
    merge: bool = Field(False, description="LoRA: also save the adapter merged into the base as a plain HF model.")
    precision: Precision = Field("bf16", description="Mixed precision (autocast); fp32 weights for full tuning.")
    gradient_checkpointing: bool = False
    loss_impl: LossImpl = Field(
        "auto", description="'fused' (chunked lm_head+CE with the gradient computed in the forward), 'checkpoint' "
        "(chunked, recomputed: any head module, DeepSpeed/FSDP), 'full' (all logits; the reference); 'auto' picks."
    )  # fmt: skip
    loss_chunk: int = Field(2048, ge=1, description="Trained positions per lm_head+CE chunk.")
    # --- optimisation ------------------------------------------------------------------------------------------
    lr: float = Field(5e-5, gt=0.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Cosine floor as a fraction of lr.")
    warmup_ratio: float = Field(0.02, ge=0.0, lt=1.0, description="Linear warmup over this share of the steps.")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.95, ge=0.0, lt=1.0)
    adam_eps: float = Field(1e-8, gt=0.0)
    weight_decay: float = Field(0.1, ge=0.0, description="Decoupled; not applied to biases and norm weights.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Global-norm clipping; 0 = off (norm still logged).")
    batch_size: int | None = Field(None, ge=1, description="Examples per optimizer step, global (64 when neither "
                                   "batch_size nor batch_tokens is set).")  # fmt: skip
    batch_tokens: int | None = Field(None, ge=1, description="Tokens per optimizer step, global (instead).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per process per optimizer step.")
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0.0, description="Epochs of ceil(n_agent/eta) draws (module doc).")
    seed: int = 0
    # --- evaluation, checkpoints, logging ----------------------------------------------------------------------
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Held out from BOTH sources; agent and general "
                                 "eval losses are logged separately.")  # fmt: skip
    eval_every: int = Field(0, ge=0, description="Optimizer steps between evals (0: only at the end).")
    eval_batch_rows: int = Field(4, ge=1, description="Rows per eval forward.")
    save_every: int = Field(0, ge=0, description="Optimizer steps between checkpoints (0: none).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept (the newest).")
    resume: str = Field("auto", description="'auto' (newest checkpoint in output_dir, if any), 'never', or a "
                        "checkpoint directory.")  # fmt: skip
    output_dir: str = "runs/train"
    report_to: ReportTo = "none"
    log_every: int = Field(1, ge=1)
    cpu: bool = Field(False, description="Train on CPU even where a GPU is present.")

    @model_validator(mode="before")
    @classmethod
    def _default_batch(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("batch_size") is None and data.get("batch_tokens") is None:
            data = {**data, "batch_size": 64}  # the paper's global batch, when neither is given
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if (self.batch_size is None) == (self.batch_tokens is None):
            raise ValueError("set exactly one of batch_size (examples per step) and batch_tokens (tokens per step)")
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of max_steps and epochs")
        layers = self.lora_layers
        if layers is not None and (layers < 1 if isinstance(layers, int) else not layers or min(layers) < 0):
            raise ValueError(f"lora_layers={layers!r}: give a positive count (the top k layers) or layer indices")
        if self.batch_tokens is not None and self.batch_tokens < self.max_len and self.pack:
            raise ValueError(f"batch_tokens={self.batch_tokens} is less than one row (max_len={self.max_len})")
        return self

    def require_inputs(self, where: str = "config") -> TrainConfig:
        """This config with what a run needs and the pipeline fills in: a model, and the data eta draws from.

        Kept out of validation so that a config without them is a valid *settings* object (the pipeline's
        ``train`` section); ConfigError naming ``where`` otherwise.
        """
        missing = []
        if not self.model:
            missing.append("model: the model to tune (an HF id or path)")
        if self.eta > 0 and not self.agent_data:
            missing.append(f"agent_data: eta={self.eta} draws agent examples")
        if self.eta < 1 and not self.general_data:
            missing.append(f"general_data: eta={self.eta} draws general examples (or eta=1)")
        if missing:
            raise ConfigError(f"{where}: set " + "; ".join(missing))
        return self


# ------------------------------------------------------------------------------------------------------------------
# Loading and saving


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A training config ready to run: YAML ``path`` (None: defaults) and ``key=value`` overrides read by the one
    loader (:func:`agenttuning.config.load`: unknown keys and bad values are errors naming the key, with
    suggestions), then :meth:`TrainConfig.require_inputs`."""
    config = load(TrainConfig, path, overrides)
    return config.require_inputs(str(path) if path is not None else "config")


def config_yaml(config: TrainConfig) -> str:
    """The resolved config as YAML text, fields in declaration order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically (temporary file + rename)."""
    write_text_atomic(path, config_yaml(config))


__all__ = [
    "ConfigError",
    "LossImpl",
    "Method",
    "Precision",
    "ReportTo",
    "TrainConfig",
    "config_yaml",
    "load_config",
    "save_config",
    "write_text_atomic",
]
