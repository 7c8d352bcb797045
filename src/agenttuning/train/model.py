"""Loading the model to tune (full, LoRA, QLoRA) and saving the result as plain Hugging Face folders.

* **full**: every weight trains; weights are loaded in float32 (master weights) and ``precision`` is applied as
  mixed precision by ``accelerate`` (autocast; DeepSpeed and FSDP apply their own bf16/fp16 policies).
* **lora**: the base is loaded in the compute dtype and frozen; PEFT injects LoRA adapters (kept in float32) into
  ``lora_target_modules`` (default ``"all-linear"``: every linear layer but the output head).
* **qlora**: the same on a 4-bit NF4 base (bitsandbytes, CUDA only: anything else is a clear error up front).

What is saved (:func:`save_final`) loads directly with ``AutoModelForCausalLM.from_pretrained`` and vLLM: config,
safetensors weights in the training precision (bf16/fp16; fp32 when training in fp32), generation config, the
tokenizer with its chat template, and ``train_config.yaml``. LoRA saves the adapter (``PeftModel.from_pretrained``
over the base), and with ``merge`` also the adapter merged into a freshly loaded base as a plain model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from agenttuning.train.config import ConfigError, TrainConfig, save_config, write_text_atomic

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _resolve(name: str) -> str:
    """A hub id or folder as it is; a ``.gguf`` file or alias as its converted folder (:mod:`agenttuning.models`)."""
    from agenttuning.models import ModelSourceError, resolve_model

    try:
        return resolve_model(name)
    except ModelSourceError as e:
        raise ConfigError(str(e)) from None


def load_training_tokenizer(config: TrainConfig) -> Any:
    """The tokenizer (``tokenizer`` or the model's), with ``chat_template`` applied when the config gives one."""
    from transformers import AutoTokenizer

    source = _resolve(config.tokenizer or config.model)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as e:
        raise ConfigError(f"cannot load a tokenizer from {source!r} ({e}); set tokenizer=...") from None
    if config.chat_template:
        p = Path(config.chat_template)
        tok.chat_template = p.read_text(encoding="utf-8") if p.is_file() else config.chat_template
    return tok


def check_method(config: TrainConfig, sharded: bool) -> None:
    """Refuse what cannot run here, before anything heavy is loaded."""
    if config.method != "qlora":
        return
    if config.cpu or not torch.cuda.is_available():
        raise ConfigError("method=qlora needs a CUDA GPU (bitsandbytes 4-bit); use method=lora on this machine")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method=qlora needs bitsandbytes: pip install bitsandbytes (or use method=lora)")
    if sharded:
        raise ConfigError("method=qlora runs on one GPU per process (DDP); not with DeepSpeed ZeRO-3 or FSDP")


def load_model(config: TrainConfig, *, device_index: int | None = None) -> nn.Module:
    """The model to train: full, or PEFT-wrapped for lora/qlora; ``use_cache`` off, checkpointing as configured."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"attn_implementation": config.attn_implementation or "sdpa"}
    compute = DTYPES[config.precision]
    if config.method == "full":
        kwargs["dtype"] = torch.float32
    elif config.method == "lora":
        kwargs["dtype"] = compute
    else:
        from transformers import BitsAndBytesConfig

        kwargs["dtype"] = compute
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )  # fmt: skip
        kwargs["device_map"] = {"": device_index or 0}
    model = AutoModelForCausalLM.from_pretrained(_resolve(config.model), **kwargs)
    model.config.use_cache = False
    if config.gradient_checkpointing:  # non-reentrant: no need for inputs that require grad (frozen embeddings)
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )  # fmt: skip
    targets, layers = lora_targets(model, config.lora_target_modules, config.lora_layers)
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=targets, layers_to_transform=layers, task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, lora)


def lora_targets(
    model: nn.Module, target_modules: list[str] | str, lora_layers: int | list[int] | None
) -> tuple[list[str] | str, list[int] | None]:
    """PEFT's ``(target_modules, layers_to_transform)`` for ``lora_layers`` (None: every layer, as given).

    ``lora_layers=k`` adapts the top ``k`` decoder layers. Nothing below the lowest adapted layer then needs a
    gradient (the embeddings and those layers are frozen and their inputs need none), so autograd records no graph
    there and backward stops at that layer: with the top 8 of SmolLM2's 30 layers a step costs a forward plus the
    backward of 8 layers. PEFT refuses ``layers_to_transform`` with the string ``"all-linear"``, so that is
    expanded here to the names of the linear layers inside the decoder layers (never the output head).
    """
    if lora_layers is None:
        return target_modules, None
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if isinstance(lora_layers, int):
        if n_layers and lora_layers > n_layers:
            raise ConfigError(f"lora_layers={lora_layers}: the model has {n_layers} decoder layers")
        layers = list(range(max(0, n_layers - lora_layers), n_layers))
    else:
        layers = sorted(set(lora_layers))
        if n_layers and layers[-1] >= n_layers:
            raise ConfigError(f"lora_layers={lora_layers}: layer {layers[-1]} does not exist ({n_layers} layers)")
    if not layers:
        raise ConfigError("lora_layers: the model config has no num_hidden_layers; give layer indices")
    if target_modules == "all-linear":
        names = set()
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
                names.add(name.rsplit(".", 1)[-1])
        target_modules = sorted(names)
    return target_modules, layers


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: matrices decay, vectors (biases, norm weights) do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            shape = getattr(p, "ds_shape", p.shape)  # ZeRO-3 partitions a parameter into an empty tensor
            (decay if len(shape) >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _save_dtype(config: TrainConfig) -> torch.dtype:
    return DTYPES[config.precision]


def _set_config_dtype(folder: Path, dtype: torch.dtype) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    name = str(dtype).removeprefix("torch.")
    if data.get("dtype") != name:
        data["dtype"] = name
        write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_final(
    accelerator: Accelerator, loss_model: nn.Module, tokenizer: Any, config: TrainConfig, output_dir: Path
) -> Path:
    """Save the trained model (every process must call this); returns the folder to load (model or adapter)."""
    state = accelerator.get_state_dict(loss_model)  # gathered on the main process under ZeRO-3 / FSDP
    inner = accelerator.unwrap_model(loss_model).model
    dtype = _save_dtype(config)
    folder = output_dir / ("model" if config.method == "full" else "adapter")
    if accelerator.is_main_process:
        state = {k.removeprefix("model."): v for k, v in state.items()}
        if config.method == "full":
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        inner.save_pretrained(folder, state_dict=state, safe_serialization=True)
        if config.method == "full":
            _set_config_dtype(folder, dtype)
        tokenizer.save_pretrained(folder)
        save_config(config, folder / "train_config.yaml")
    accelerator.wait_for_everyone()
    if config.method != "full" and config.merge:
        if accelerator.is_main_process:
            merge_adapter(config.model, folder, output_dir / "model", dtype=dtype, tokenizer=tokenizer)
            save_config(config, output_dir / "model" / "train_config.yaml")
        accelerator.wait_for_everyone()
        return output_dir / "model"
    return folder


def merge_adapter(
    base: str, adapter_dir: str | Path, out_dir: str | Path, *, dtype: torch.dtype, tokenizer: Any = None
) -> Path:
    """Load ``base`` (unquantized, ``dtype``) on CPU, merge the LoRA adapter into it, save it as a plain HF model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_resolve(base), dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


__all__ = [
    "DTYPES", "check_method", "load_model", "load_training_tokenizer", "lora_targets", "merge_adapter", "param_groups",
    "save_final",
]
