"""Shared-prefix training: our trainer with and without ``prefix_sharing`` on the same db-v1 trajectories, tokens/s.

The same everything, in one process, one run after the other (``agenttuning.train.train`` both times):

* **model** — SmolLM2-135M-Instruct (``agenttuning.models.resolve_model("smollm2-135m-instruct")``, else the converted
  folder ``/tmp/smol/hf``, else ``--model``), float32 on CPU, full fine-tuning, sdpa attention.
* **data** — db-v1 expert trajectories (our rollout engine, the train split), rendered with SmolLM2's own chat
  template as ``agenttuning prepare --no-pack`` does: ~1,330 tokens each, of which the first ~850 (system prompt,
  instructions, the in-context example) are the same in every trajectory and ~100 are trained. ``--eta 0.2`` mixes
  in general chats (stdlib docstrings, 1–6 turns) as the paper's hybrid tuning does.
* **settings** — identical but for ``prefix_sharing``: packed rows of ``max_len`` tokens (*layout* tokens with
  sharing), ``batch_size`` examples per step dealt to ``grad_accum`` micro-batches, constant lr, AdamW, clipping,
  no eval, no checkpoints. The global batches hold the same examples; with sharing each row lays its examples out as
  a trie (each shared prefix once) and attends segment by segment.
* **checked** — the losses of every step agree (relative ``--loss-rtol``, float32: they are the same sums in another
  order), and so do the examples' and trained tokens of every step.

Throughput is steady state, as in ``train_throughput.py``: wall time between optimizer-step ends, the first
``--warmup`` steps not timed; **tokens/s counts the examples' tokens** (what the same batches cost without sharing),
so the two rates compare directly; layout tokens/s (what was computed) is shown beside. Two more variants take
the gain apart: ``mask`` shares prefixes but attends through a dense 4D bool mask (the segment kernel refused), so
it saves tokens only; ``roots`` runs the segment kernel on rows that share nothing (every example a root, packed as
without sharing), so it saves only the masked-out attention blocks that today's dense block-diagonal mask computes.

Full mode: 48 db trajectories, eta 1, batch 12, max_len 4096, 4 micro-batches per step (one row each: two rows of
4,096 tokens in one micro-batch need over 20 GB on CPU), 3 steps of which 1 warm-up, variants plain, roots, segments
and mask (~30 minutes on 2 cores). ``--quick`` (< 1 minute here): SmolLM2 cut to its first 4 layers, batch 6, 2
steps of which 1 warm-up, plain and segments — a check of the harness and of the loss agreement more than a
measurement.

    python benchmarks/prefix_sharing.py            # full
    python benchmarks/prefix_sharing.py --quick    # last line: JSON with ratio and the loss agreement
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the timing record shared with the throughput benchmark
from train_throughput import Run, _release_accelerate

LABELS = {"plain": "no sharing", "roots": "no sharing, seg. kernel", "segments": "sharing, seg. kernel",
          "mask": "sharing, 4D mask"}  # fmt: skip


def find_model(explicit: str | None) -> str:
    if explicit:
        return explicit
    try:
        from agenttuning.models.sources import resolve_model

        return resolve_model("smollm2-135m-instruct", progress=False)
    except Exception as e:  # noqa: BLE001 - fall back to the converted folder
        reason = f"{type(e).__name__}: {e}"
    if Path("/tmp/smol/hf/config.json").is_file():
        return "/tmp/smol/hf"
    sys.exit(f"no SmolLM2: resolve_model('smollm2-135m-instruct') failed ({reason}) and /tmp/smol/hf is absent; "
             "pass --model")  # fmt: skip


def cut_model(source: str, layers: int, out: Path) -> Path:
    """SmolLM2 with only its first ``layers`` decoder layers (real weights), saved with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def write_data(folder: Path, tok: Any, n_agent: int, n_general: int, max_len: int, seed: int) -> dict[str, Any]:
    """db-v1 expert trajectories (and general chats) rendered with the tokenizer's template, as prepared JSONL."""
    from agenttuning.data.example import Example, from_trajectory
    from agenttuning.data.general import stdlib_examples
    from agenttuning.data.rows import write_rows
    from agenttuning.envs.base import get
    from agenttuning.policies.baselines import ExpertPolicy
    from agenttuning.rollout.engine import rollout
    from agenttuning.tokens.length import fit_all
    from agenttuning.tokens.masks import render_batch
    from agenttuning.tokens.prefix_tree import common_prefix

    env = get("db")
    summary = rollout(env, env.tasks("train")[:n_agent], ExpertPolicy(env), folder / "trajectories.jsonl",
                      concurrency=4)  # fmt: skip
    done = sorted(summary.trajectories, key=lambda t: t.task.id)  # the engine's completion order varies
    agent = [from_trajectory(t).turns for t in done]
    singles = stdlib_examples(seed=seed)
    rng = random.Random(seed)
    general = []
    for i in range(n_general):
        turns = [t for _ in range(rng.randint(1, 6)) for t in singles[rng.randrange(len(singles))].turns]
        general.append(Example(id=f"chat-{i}", source="general", family="stdlib", turns=turns).turns)
    stats: dict[str, Any] = {}
    for name, convs in (("agent", agent), ("general", general)):
        if not convs:
            continue
        fitted, _ = fit_all(render_batch(convs, tok, None), max_len, "truncate_turns")
        kept = [e for e in fitted if e is not None]
        write_rows(folder / f"{name}.jsonl", ({"input_ids": e.input_ids, "labels": e.labels} for e in kept))
        ids = [list(e.input_ids) for e in kept]
        tokens = sum(len(x) for x in ids)
        stats[name] = {"examples": len(kept), "tokens_mean": round(tokens / len(kept)),
                       "trained_mean": round(sum(e.num_trained for e in kept) / len(kept)),
                       "common_prefix": min(common_prefix(ids[0], x) for x in ids)}  # fmt: skip
    return stats


def run(variant: str, args: argparse.Namespace, model: str, data: Path, out: Path) -> tuple[Run, list[int], str]:
    """One training run; returns its per-step record, the layout tokens of each step and the sharing mode used."""
    from agenttuning.train import TrainConfig, train, tree_attention

    config = TrainConfig.model_validate({
        "model": model, "agent_data": str(data / "agent.jsonl"),
        "general_data": str(data / "general.jsonl") if args.eta < 1 else None, "eta": args.eta,
        "max_len": args.max_len, "pack": True, "prefix_sharing": variant != "plain", "method": "full",
        "precision": "fp32", "attn_implementation": "sdpa", "lr": args.lr, "warmup_ratio": 0.0, "min_lr_ratio": 1.0,
        "batch_size": args.batch, "grad_accum": args.grad_accum, "max_steps": args.steps, "seed": args.seed,
        "eval_fraction": 0.0, "save_every": 0, "resume": "never", "output_dir": str(out), "report_to": "none",
        "log_every": args.steps, "cpu": True,
    })  # fmt: skip
    record, layouts = Run(LABELS[variant]), []

    def on_step(event: Any) -> None:
        record.mark(event.record["loss"], event.record["tokens"], event.record["trained_tokens"])
        layouts.append(event.record["layout_tokens"])

    from agenttuning.train import batches

    enable, shared_rows = tree_attention.enable, batches.shared_rows
    if variant == "mask":
        tree_attention.enable = lambda model: False  # refuse the kernel: sdpa with the dense 4D tree mask
    if variant == "roots":  # share nothing (every example a root), but attend through the segment kernel
        batches.shared_rows = lambda examples, sources, max_len, min_shared: shared_rows(  # type: ignore[assignment]
            examples, sources, max_len, 10**9)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = train(config, callbacks=[on_step])
    finally:
        tree_attention.enable, batches.shared_rows = enable, shared_rows
    _release_accelerate()
    return record, layouts, result.prefix_sharing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="< 1 minute: SmolLM2's first 4 layers, batch 6, 2 steps")
    ap.add_argument("--model", default=None, help="model folder (default: SmolLM2-135M-Instruct, see the doc)")
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N layers (default: all; 4 quick)")
    ap.add_argument("-n", type=int, default=None, help="db trajectories to roll out (default 48; 12 quick)")
    ap.add_argument("--eta", type=float, default=1.0, help="agent share of the draws (0.2: mixed with general chats)")
    ap.add_argument("--batch", type=int, default=None, help="examples per optimizer step (default 12; 6 quick)")
    ap.add_argument("--max-len", type=int, default=4096, help="row length (layout tokens with sharing)")
    ap.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default 4: one 4,096-token "
                    "row of SmolLM2 each, ~11 GB of activations; 2 quick)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 3; 2 quick)")
    ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the timing")
    ap.add_argument("--variants", default=None, help="comma-separated, plain first: plain, roots, segments, mask "
                    "(default all four; plain,segments quick)")  # fmt: skip
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss-rtol", type=float, default=1e-4, help="losses of every step must agree this closely")
    args = ap.parse_args()
    q = args.quick
    args.layers = args.layers if args.layers is not None else (4 if q else None)
    args.n = args.n or (12 if q else 48)
    args.batch = args.batch or (6 if q else 12)
    args.steps = args.steps or (2 if q else 3)
    args.grad_accum = args.grad_accum or (2 if q else 4)
    variants = (args.variants or ("plain,segments" if q else "plain,roots,segments,mask")).split(",")
    assert variants[0] == "plain" and set(variants) <= set(LABELS), f"plain first, then any of {list(LABELS)[1:]}"
    assert args.steps > args.warmup >= 1, "need at least one warm-up step and one timed step"

    from transformers import AutoTokenizer

    console = Console(width=180)
    t0 = time.perf_counter()
    source = find_model(args.model)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        model = str(cut_model(source, args.layers, work / "model")) if args.layers else source
        tok = AutoTokenizer.from_pretrained(model)
        n_general = 0 if args.eta >= 1 else round(args.n * (1 - args.eta) / max(args.eta, 1e-9))
        stats = write_data(work, tok, args.n, n_general, args.max_len, args.seed)
        setup_s = time.perf_counter() - t0
        runs: dict[str, tuple[Run, list[int], str]] = {}
        for v in variants:
            runs[v] = run(v, args, model, work, work / f"run-{v}")

    plain = runs["plain"][0]
    table = Table(title=(f"prefix sharing · SmolLM2-135M{f' (first {args.layers} layers)' if args.layers else ''}, "
                         f"fp32 CPU · db-v1, eta {args.eta} · batch {args.batch}, max_len {args.max_len}, "
                         f"{args.grad_accum} micro-batches · {args.steps} steps, first {args.warmup} not timed"),
                  header_style="bold")  # fmt: skip
    for col in ("trainer", "mode", "timed steps", "example tokens", "layout tokens", "trained", "seconds",
                "tokens/s", "layout tok/s", "ratio", "loss step 1", f"loss step {args.steps}"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("trainer", "mode") else "right")
    out: dict[str, Any] = {"benchmark": "prefix_sharing", "quick": q}
    base = plain.steady(args.warmup)
    max_diff = 0.0
    for v, (r, layouts, mode) in runs.items():
        st = r.steady(args.warmup)
        layout = sum(layouts[max(1, args.warmup) :])
        ratio = st["tokens_per_s"] / base["tokens_per_s"]
        assert r.tokens == plain.tokens and r.trained == plain.trained, f"{v}: other tokens than planned"
        diff = max(abs(a - b) / abs(b) for a, b in zip(r.losses, plain.losses, strict=True))
        max_diff = max(max_diff, diff)
        table.add_row(LABELS[v], mode.split(" ")[0], str(st["steps"]), f"{st['tokens']:,}", f"{layout:,}",
                      f"{st['trained']:,}", f"{st['seconds']:.1f}", f"{st['tokens_per_s']:,.1f}",
                      f"{layout / st['seconds']:,.1f}", f"{ratio:.2f}x", f"{r.losses[0]:.6f}",
                      f"{r.losses[-1]:.6f}")  # fmt: skip
        out[f"{v}_tokens_per_s"] = round(st["tokens_per_s"], 1)
        out[f"{v}_layout_share"] = round(layout / st["tokens"], 3)
        out[f"{v}_seconds"] = round(st["seconds"], 1)
        out[f"{v}_mode"] = mode
        if v != "plain":
            out[f"{v}_ratio"] = round(ratio, 2)
    console.print(table)
    shared = "segments" if "segments" in runs else variants[-1]
    out["ratio"] = out.get(f"{shared}_ratio")
    out["losses_agree"] = max_diff <= args.loss_rtol
    out["max_loss_rel_diff"] = float(f"{max_diff:.2e}")
    out["losses_plain"] = [round(x, 6) for x in plain.losses]
    out.update({"layers": args.layers or "all", "eta": args.eta, "batch": args.batch, "max_len": args.max_len,
                "grad_accum": args.grad_accum, "steps": args.steps, "warmup_steps": args.warmup,
                "timed_tokens": base["tokens"], "data": stats, "setup_s": round(setup_s, 1)})  # fmt: skip
    console.print(f"ratio (examples' tokens/s, sharing / plain): {out['ratio']}x · layout share "
                  f"{out.get(f'{shared}_layout_share')} · losses agree to {args.loss_rtol:g}: {out['losses_agree']} "
                  f"(max relative difference {out['max_loss_rel_diff']}) · setup {setup_s:.0f}s")  # fmt: skip
    print(json.dumps(out))
    if not out["losses_agree"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
