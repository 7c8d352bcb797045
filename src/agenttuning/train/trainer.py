"""Stage 2, hybrid instruction tuning (AgentTuning §2.2, recipe of §3.1), as one linear story: setup → loop → save.

    from agenttuning.train import load_config, train
    result = train(load_config("configs/cpu-demo.yaml", ["max_steps=20"]))

Runs on ``accelerate``, so the same code trains on one CPU, on several processes (DDP), and sharded with DeepSpeed
ZeRO-3 or FSDP: ``accelerate launch --config_file configs/accelerate/<x>.yaml -m agenttuning.train --config ...``
(see ``docs/train.md``). Each optimizer step:

1. the :class:`~agenttuning.train.data.BatchPlanner` draws the global batch from the eta-mixture, packs it and deals
   its rows to ``num_processes * grad_accum`` micro-batch slots (the same plan on every process); with
   ``prefix_sharing`` (the default) examples that begin alike share one copy of their prefix in a row
   (:mod:`agenttuning.tokens.prefix_tree`, :func:`sharing_mode`), with the same losses and gradients;
2. each of this process's micro-batches runs forward — body, then lm_head + cross-entropy on the trained positions
   only (:mod:`agenttuning.train.loss`) — and backward on ``loss_sum * num_processes * grad_accum / trained``,
   where ``trained`` counts the trained tokens of the *global* batch: after DDP's mean over processes and
   accelerate's division by ``grad_accum``, the gradient is that of the mean loss over every trained token of the
   batch, however the batch was split;
3. gradients are clipped to ``max_grad_norm``, AdamW steps, the cosine schedule advances;
4. metrics are logged; every ``eval_every`` steps the held-out agent and general losses; every ``save_every`` steps
   an atomic checkpoint (:mod:`agenttuning.train.checkpoint`) that a later run resumes from exactly: same weights,
   optimizer moments, lr, data position and RNG states, hence the same losses step for step.

At the end the model is saved as a plain Hugging Face folder (:func:`agenttuning.train.model.save_final`) and
``metrics.json`` is written last: its presence marks a finished run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agenttuning.config import read_yaml_mapping
from agenttuning.jsonl import locked
from agenttuning.train.batches import BatchPlanner, MicroBatch, TreeRow, collate, eval_micro_batches
from agenttuning.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, trainable_only_hook
from agenttuning.train.config import ConfigError, TrainConfig, save_config
from agenttuning.train.data import AGENT, GENERAL, Sources, load_sources
from agenttuning.train.loss import CausalLMLoss, check_decomposition, resolve_impl, trained_mask
from agenttuning.train.metrics import MetricsLogger, Timer
from agenttuning.train.model import check_method, load_model, load_training_tokenizer, param_groups, save_final
from agenttuning.train.schedule import cosine_with_warmup, warmup_steps_for

# Fields that fix the data stream and the meaning of a step: a resumed run must agree with its checkpoint on them.
STREAM_FIELDS = ("agent_data", "general_data", "eta", "seed", "max_len", "pack", "length_policy", "batch_size",
                 "batch_tokens", "eval_fraction", "model", "method")  # fmt: skip


@dataclass
class StepEvent:
    """What a callback sees after each optimizer step (raise from a callback to stop the run)."""

    step: int
    total_steps: int
    record: dict[str, Any]


@dataclass
class TrainResult:
    """What a run did. ``losses`` holds the training loss of each step this process ran (global mean)."""

    output_dir: Path
    model_dir: Path | None
    steps: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    eval: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    trained_tokens: int = 0
    layout_tokens: int = 0  # the tokens actually computed (fewer than ``tokens`` with prefix sharing)
    wall_s: float = 0.0
    tokens_per_s: float = 0.0  # the examples' tokens per second (comparable with and without prefix sharing)
    loss_impl: str = ""
    prefix_sharing: str = "off"  # how shared-prefix rows attended: segments, mask, additive_mask, or off
    resumed_from: Path | None = None


# ------------------------------------------------------------------------------------------------------------------
# Setup helpers


def make_accelerator(config: TrainConfig) -> Any:
    """The ``Accelerator``: mixed precision, accumulation, trackers; the launch config picks DDP/DeepSpeed/FSDP."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    log_with = None if config.report_to == "none" else config.report_to
    if log_with is not None and importlib.util.find_spec(log_with) is None:
        alt = " (or tensorboardX)" if log_with == "tensorboard" else ""
        if not (log_with == "tensorboard" and importlib.util.find_spec("tensorboardX")):
            raise ConfigError(f"report_to={log_with} needs the {log_with} package{alt}: pip install {log_with}")
    out = Path(config.output_dir)
    accel = getattr(torch, "accelerator", None)
    has_device = accel.is_available() if accel is not None else torch.cuda.is_available()
    accelerator = Accelerator(
        # accelerate forms a CPU process group (gloo) only when told it runs on CPU
        cpu=config.cpu or not has_device,
        mixed_precision={"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[config.precision],
        gradient_accumulation_steps=config.grad_accum,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        step_scheduler_with_optimizer=False,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes but accelerate sees {accelerator.num_processes}: "
                           "they would train independently and overwrite each other's output")  # fmt: skip
    return accelerator


def _is_sharded(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def _fill_deepspeed_auto(accelerator: Any, config: TrainConfig) -> None:
    """DeepSpeed's ``auto`` values that accelerate cannot infer without a DataLoader: micro-batch and clipping."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = 1  # rows per micro-batch vary with packing; DS only uses it for logs
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = config.max_grad_norm
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError("remove 'optimizer'/'scheduler' from the DeepSpeed config: the trainer builds AdamW and "
                          "the cosine schedule itself (from lr, adam_*, weight_decay, warmup_ratio)")  # fmt: skip


def _check_resume(config: TrainConfig, folder: Path) -> None:
    saved_path = folder / "train_config.yaml"
    if not saved_path.is_file():
        return
    saved = read_yaml_mapping(saved_path)
    current = config.model_dump(mode="json")
    diff = [k for k in STREAM_FIELDS if saved.get(k) != current.get(k)]
    if diff:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise ConfigError(f"cannot resume {folder}: the data stream would differ ({pairs}); "
                          "use another output_dir or resume=never")  # fmt: skip


def _resume_dir(config: TrainConfig) -> Path | None:
    if config.resume == "never":
        found = latest_checkpoint(config.output_dir)
        if found is not None:
            raise ConfigError(f"resume=never but {found} exists: use another output_dir, or resume=auto")
        return None
    if config.resume == "auto":
        return latest_checkpoint(config.output_dir)
    folder = Path(config.resume)
    if not folder.is_dir():
        raise ConfigError(f"resume={config.resume}: no such checkpoint directory")
    return folder


def _probe(sources: Sources, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    table = sources.train[AGENT] if len(sources.train[AGENT]) else sources.train[GENERAL]
    ids = table.example(0).input_ids[:64]
    if len(ids) < 2:
        ids = ids * 2
    return torch.tensor([ids], device=device), torch.arange(len(ids), device=device)[None]


def _source_sums(token_losses: torch.Tensor, mb: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    if mb.targets is not None:  # shared-prefix rows: one loss per (weighted) target, its source alongside
        src, weighted = mb.target_sources, token_losses * mb.targets[2].to(token_losses.dtype)
        return weighted[src == AGENT].sum(), weighted[src == GENERAL].sum()
    src = mb.source_ids[:, 1:][trained_mask(mb.labels)]
    return token_losses[src == AGENT].sum(), token_losses[src == GENERAL].sum()


# ------------------------------------------------------------------------------------------------------------------
# Prefix sharing: how, and whether it holds on this model


def sharing_mode(config: TrainConfig, model: Any) -> tuple[str, str]:
    """``(mode, why)``: how shared-prefix rows attend on this model, or ``"off"`` (today's packed rows) and why.

    ``"segments"`` (sdpa models: each segment attends to its path, :mod:`agenttuning.train.tree_attention`; the model
    is switched to that implementation here), ``"additive_mask"`` (eager: a 4D float mask). Off: ``prefix_sharing``
    false, ``pack`` false (a row holds one example: nothing to share), flash-attention (its varlen kernels take
    disjoint sequences, ``cu_seq_lens``: a suffix cannot attend to a prefix stored once), other attention
    implementations, and sliding-window attention (a 4D mask would replace the window).
    """
    from agenttuning.train import tree_attention
    from agenttuning.train.loss import base_model_of

    if not config.prefix_sharing:
        return "off", "prefix_sharing=false"
    if not config.pack:
        return "off", "pack=false: one example per row"
    attn = config.attn_implementation or "sdpa"
    if "flash" in attn:
        return "off", f"{attn}: varlen rows take disjoint sequences"
    mc = getattr(base_model_of(model), "config", None)
    window = getattr(mc, "sliding_window", None)
    if window is not None and getattr(mc, "use_sliding_window", True) is not False:
        return "off", f"sliding_window={window}"
    if attn == "sdpa":
        return ("segments", "") if tree_attention.enable(model) else ("mask", "")
    if attn == "eager":
        return "additive_mask", ""
    return "off", f"attn_implementation={attn}"


@torch.no_grad()
def check_sharing(loss_model: Any, sources: Sources, mode: str, device: Any, rtol: float) -> tuple[bool, float, float]:
    """Shared-prefix rows against the same examples packed side by side, on a probe: ``(agree, shared, separate)``.

    The probe: the first 48 tokens of a training example, every next token trained, twice (identical: a weight-2
    target), and a third that leaves it after 32 tokens (a branch). Eval mode; call on every process at once.
    """
    from agenttuning.tokens.packing import build_rows
    from agenttuning.tokens.prefix_tree import tree_layout
    from agenttuning.tokens.record import TokenRecord
    from agenttuning.train.batches import Row

    table = sources.train[AGENT] if len(sources.train[AGENT]) else sources.train[GENERAL]
    ids = list(table.example(0).input_ids[:48])
    while len(ids) < 48:
        ids = ids + ids
    ids = ids[:48]
    other = ids[:32] + ids[32:][::-1]
    if other == ids:
        other = ids[:32] + [ids[0]] * 16
    exs = [TokenRecord(x, list(x), [len(x)]) for x in (ids, ids, other)]
    was_training = loss_model.training
    loss_model.eval()
    try:
        row = TreeRow(tree_layout(exs, tags=[AGENT] * 3))
        tree = collate([row], tree_attention=mode).to(device)  # type: ignore[arg-type]
        shared = float(loss_model(tree.input_ids, tree.labels, tree.position_ids, targets=tree.targets,
                                  **tree.extra)[0])  # fmt: skip
        plain = collate([Row(r, (AGENT,) * 3) for r in build_rows(exs, [[0, 1, 2]])]).to(device)
        separate = float(loss_model(plain.input_ids, plain.labels, plain.position_ids, **plain.extra)[0])
    finally:
        loss_model.train(was_training)
    return abs(shared - separate) <= rtol * max(abs(separate), 1e-6), shared, separate


# ------------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    accelerator: Any, loss_model: Any, sources: Sources, config: TrainConfig, pad_id: int, sharing: str = "off"
) -> dict[str, float]:
    """Held-out loss per source, mean over its trained tokens: ``eval_agent_loss``, ``eval_general_loss``.

    ``sharing``: a :func:`sharing_mode` other than ``"off"`` lays the held-out examples out with shared prefixes.
    """
    flatten = "flash" in (config.attn_implementation or "")
    loss_model.eval()
    out: dict[str, float] = {}
    try:
        for src, name in ((AGENT, "agent"), (GENERAL, "general")):
            table = sources.eval[src]
            if len(table) == 0:
                continue
            batches = eval_micro_batches(
                table, src, max_len=config.max_len, pack=config.pack, rows_per_batch=config.eval_batch_rows,
                process_index=accelerator.process_index, num_processes=accelerator.num_processes,
                prefix_sharing=sharing != "off",
            )  # fmt: skip
            sums = torch.zeros(2, dtype=torch.float32 if accelerator.device.type == "mps" else torch.float64,
                               device=accelerator.device)  # fmt: skip
            for rows in batches:
                mb = collate(rows, pad_id, flatten=flatten, tree_attention=_tree_mode(sharing)).to(accelerator.device)
                loss_sum, _ = loss_model(mb.input_ids, mb.labels, mb.position_ids, targets=mb.targets, **mb.extra)
                sums[0] += loss_sum.to(sums.dtype)
                sums[1] += mb.trained
            total = accelerator.reduce(sums, "sum")
            out[f"eval_{name}_loss"] = float(total[0] / total[1]) if total[1] > 0 else float("nan")
    finally:
        loss_model.train()
    return out


def _tree_mode(sharing: str) -> Any:
    return sharing if sharing != "off" else "segments"


# ------------------------------------------------------------------------------------------------------------------
# The story


def train(config: TrainConfig, *, callbacks: Sequence[Callable[[StepEvent], None]] = ()) -> TrainResult:
    """Train per ``config``; returns what happened. Call on every process (``accelerate launch`` does).

    ``callbacks`` are called with a :class:`StepEvent` after every optimizer step; an exception from one stops the
    run (what a kill would do: the newest checkpoint is where a later run resumes).
    """
    config.require_inputs()  # before any process group or model: a settings-only config cannot run
    accelerator = make_accelerator(config)
    try:
        with contextlib.ExitStack() as held:
            if accelerator.is_main_process:
                # a second trainer on the same folder would delete this run's metrics and overwrite its checkpoints:
                # it gets a clear LockedError instead (the kernel drops the lock even when this process is killed)
                held.enter_context(locked(Path(config.output_dir) / ".lock", "this training run"))
            return _train(accelerator, config, callbacks)
    finally:
        _release_accelerate_state(accelerator)


def _train(accelerator: Any, config: TrainConfig, callbacks: Sequence[Callable[[StepEvent], None]]) -> TrainResult:
    # ---- setup ---------------------------------------------------------------------------------------------------
    from accelerate.utils import set_seed

    sharded = _is_sharded(accelerator)
    check_method(config, sharded)
    resumed_from = _resume_dir(config)
    if resumed_from is not None:
        _check_resume(config, resumed_from)
    out = Path(config.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)  # written last: its presence means a finished run
    set_seed(config.seed)

    sources = load_sources(
        config.agent_data, config.general_data, eta=config.eta, max_len=config.max_len,
        policy=config.length_policy, eval_fraction=config.eval_fraction, seed=config.seed,
    )  # fmt: skip
    tokenizer = load_training_tokenizer(config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model = load_model(config, device_index=accelerator.local_process_index)
    vocab = model.get_input_embeddings().num_embeddings
    for table in (*sources.train, *sources.eval):
        if table.max_id() >= vocab:
            raise ConfigError(f"{table.name} data holds token id {table.max_id()} but the model's vocabulary has "
                              f"{vocab}: was it prepared with another tokenizer?")  # fmt: skip

    sharing, sharing_off_because = sharing_mode(config, model)
    impl = resolve_impl(model, config.loss_impl, sharded=sharded)
    loss_model = CausalLMLoss(model, impl=impl, chunk=config.loss_chunk)
    optimizer = torch.optim.AdamW(
        param_groups(loss_model, config.weight_decay), lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
        fused=not sharded or None,  # one kernel for all parameters: ~5x faster steps on CPU than foreach
    )  # fmt: skip
    planner = BatchPlanner(
        sources.train[AGENT], sources.train[GENERAL], eta=config.eta, seed=config.seed, max_len=config.max_len,
        n_slots=accelerator.num_processes * config.grad_accum, batch_size=config.batch_size,
        batch_tokens=config.batch_tokens, pack=config.pack, prefix_sharing=sharing != "off",
    )  # fmt: skip
    epoch_draws = planner.epoch_draws()
    if config.max_steps is not None:
        total_steps = config.max_steps
    else:
        total_steps = planner.steps_for_draws(math.ceil(config.epochs * epoch_draws - 1e-9))  # type: ignore[operator]
    warmup = warmup_steps_for(total_steps, config.warmup_ratio)
    schedule = cosine_with_warmup(total_steps, warmup, config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    _fill_deepspeed_auto(accelerator, config)
    loss_model, optimizer = accelerator.prepare(loss_model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if config.method != "full" and not sharded:
        accelerator.register_save_state_pre_hook(trainable_only_hook)

    if impl != "full":  # the body + head split must give the model's own loss, or we fall back to the full path
        ids, pos = _probe(sources, accelerator.device)
        agree, ours, ref = check_decomposition(loss_model, ids, pos, rtol=1e-4 if config.precision == "fp32" else 2e-2)
        if not agree:
            impl = "full"
            accelerator.unwrap_model(loss_model).impl = "full"
            accelerator.print(f"warning: chunked loss {ours:.6g} != model's own {ref:.6g} on a probe; "
                              "using loss_impl=full")  # fmt: skip
    if sharing != "off":  # shared-prefix rows must give the separate examples' loss, or we pack as usual
        rtol = 1e-4 if config.precision == "fp32" else 2e-2
        tried = [sharing] + (["mask"] if sharing == "segments" else [])
        for mode in tried:
            try:
                agree, shared, separate = check_sharing(loss_model, sources, mode, accelerator.device, rtol)
            except (NotImplementedError, RuntimeError, ValueError, TypeError) as e:
                agree, shared, separate = False, float("nan"), float("nan")
                accelerator.print(f"warning: prefix sharing ({mode}) failed on a probe: {e}")
            if agree:
                break
        sharing = mode if agree else "off"
        planner.prefix_sharing = sharing != "off"
        if not agree:
            sharing_off_because = "its loss differed from the separate examples' on a probe"
            accelerator.print(f"warning: shared-prefix loss {shared:.6g} != separate examples' {separate:.6g} on a "
                              "probe; prefix sharing off")  # fmt: skip
    result_sharing = sharing if sharing != "off" else f"off ({sharing_off_because})"

    start_step, tokens_seen, trained_seen, layout_resumed = 0, 0, 0, 0
    if resumed_from is not None:
        state = load_checkpoint(accelerator, resumed_from, strict=config.method == "full" or sharded)
        start_step = int(state["step"])
        planner.load_state_dict(state["stream"])
        tokens_seen, trained_seen = int(state.get("tokens", 0)), int(state.get("trained_tokens", 0))
        layout_resumed = int(state.get("layout_tokens", tokens_seen))
        accelerator.print(f"resumed from {resumed_from} at step {start_step}")
    if accelerator.is_main_process:
        save_config(config, out / "config.yaml")
    trackers = config.report_to != "none"
    if trackers:
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                   for k, v in config.model_dump(mode="json").items()}  # fmt: skip
        accelerator.init_trackers("agenttuning", config=hparams)
    logger = MetricsLogger(out, accelerator, total_steps=total_steps, start_step=start_step,
                           log_every=config.log_every, trackers=trackers)  # fmt: skip
    result = TrainResult(out, None, start_step, total_steps, loss_impl=impl, prefix_sharing=result_sharing,
                         resumed_from=resumed_from)  # fmt: skip

    # ---- loop ------------------------------------------------------------------------------------------------------
    flatten = "flash" in (config.attn_implementation or "")
    world, accum = accelerator.num_processes, config.grad_accum
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
    step, run_start = start_step, time.perf_counter()
    run_tokens, run_seconds, layout_seen = 0, 0.0, layout_resumed
    tree_mode = _tree_mode(sharing)
    last_eval: dict[str, float] = {}
    acc_dtype = torch.float32 if accelerator.device.type == "mps" else torch.float64  # MPS has no float64
    try:
        if config.eval_fraction > 0 and config.eval_every and start_step == 0:
            last_eval = evaluate(accelerator, loss_model, sources, config, pad_id, sharing)
            logger.log({"step": 0, **last_eval})
        timer = Timer()
        while step < total_steps:
            batch = planner.next_batch()
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            scale = world * accum / max(1, batch.trained)
            sums = torch.zeros(3, dtype=acc_dtype, device=accelerator.device)  # loss, agent, general
            grad_norm: Any = None
            for rows in batch.micro_batches(accelerator.process_index, world):
                mb = collate(rows, pad_id, flatten=flatten, tree_attention=tree_mode).to(accelerator.device)
                with accelerator.accumulate(loss_model):
                    loss_sum, token_losses = loss_model(mb.input_ids, mb.labels, mb.position_ids, targets=mb.targets,
                                                        **mb.extra)  # fmt: skip
                    accelerator.backward(loss_sum * scale)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(loss_model.parameters(), max_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                agent_sum, general_sum = _source_sums(token_losses, mb)
                sums += torch.stack([loss_sum.detach(), agent_sum, general_sum]).to(acc_dtype)
            scheduler.step()
            step += 1
            totals = accelerator.reduce(sums, "sum").tolist()
            elapsed = timer.lap()
            tokens_seen += batch.tokens
            layout_seen += batch.layout_tokens
            run_tokens += batch.tokens
            run_seconds += elapsed
            trained_seen += batch.trained
            loss = totals[0] / max(1, batch.trained)
            record: dict[str, Any] = {
                "step": step,
                "loss": loss,
                "agent_loss": totals[1] / batch.trained_by_source[0] if batch.trained_by_source[0] else None,
                "general_loss": totals[2] / batch.trained_by_source[1] if batch.trained_by_source[1] else None,
                "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens": batch.tokens,  # the examples' tokens
                "layout_tokens": batch.layout_tokens,  # the tokens computed (fewer with prefix sharing)
                "trained_tokens": batch.trained,
                "examples": batch.examples,
                "agent_examples": batch.agent_examples,
                "tokens_per_s": batch.tokens / elapsed if elapsed > 0 else 0.0,
                "epoch": batch.draws_after / epoch_draws if epoch_draws else None,
                "step_s": elapsed,
            }
            result.losses.append(loss)
            logger.step(record)
            if config.eval_fraction > 0 and config.eval_every and step % config.eval_every == 0:
                last_eval = evaluate(accelerator, loss_model, sources, config, pad_id, sharing)
                logger.log({"step": step, **last_eval})
            if config.save_every and (step % config.save_every == 0 or step == total_steps):  # the last: to extend
                state = {"step": step, "stream": planner.state_dict(), "tokens": tokens_seen,
                         "trained_tokens": trained_seen, "layout_tokens": layout_seen,
                         "total_steps": total_steps}  # fmt: skip
                save_checkpoint(accelerator, out, step, state, config, config.save_total_limit)
            result.steps = step
            for callback in callbacks:
                callback(StepEvent(step, total_steps, record))
            timer.lap()  # eval, checkpoint and callbacks are not training time

        # ---- save ----------------------------------------------------------------------------------------------
        if config.eval_fraction > 0 and not (config.eval_every and step % config.eval_every == 0 and last_eval):
            last_eval = evaluate(accelerator, loss_model, sources, config, pad_id, sharing)
            logger.log({"step": step, **last_eval})
        result.eval = last_eval
        result.model_dir = save_final(accelerator, loss_model, tokenizer, config, out)
    finally:
        logger.close()
    result.wall_s = time.perf_counter() - run_start
    result.tokens, result.trained_tokens, result.layout_tokens = tokens_seen, trained_seen, layout_seen
    ran = result.losses
    result.tokens_per_s = run_tokens / run_seconds if run_seconds else 0.0
    if accelerator.is_main_process:
        from agenttuning.data.rows import write_json

        write_json(out / "metrics.json", {
            "stage": "train", "steps": step, "total_steps": total_steps, "loss": ran[-1] if ran else None,
            **last_eval, "tokens": tokens_seen, "trained_tokens": trained_seen,
            "tokens_per_s": result.tokens_per_s, "wall_s": result.wall_s, "model_dir": str(result.model_dir),
            "layout_tokens": layout_seen, "loss_impl": impl, "prefix_sharing": result_sharing,
            "num_processes": world, "resumed_from": str(resumed_from) if resumed_from else None,
            "data": sources.to_dict(),
        })  # fmt: skip
    if trackers:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return result


def _release_accelerate_state(accelerator: Any) -> None:
    """Let a later ``train()`` in the same single process use other settings (precision, accumulation).

    ``accelerate`` keeps its state in process-wide singletons that refuse a second ``Accelerator`` with a different
    ``mixed_precision``; its own tests reset them the same way. Never done in a launched multi-process run.
    """
    if accelerator.num_processes != 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


__all__ = [
    "STREAM_FIELDS",
    "StepEvent",
    "TrainResult",
    "check_sharing",
    "evaluate",
    "make_accelerator",
    "sharing_mode",
    "train",
]
