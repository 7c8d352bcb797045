"""Tokenise + mask + pack throughput: agenttuning's prepare path against TRL's SFTTrainer dataset preparation.

Same conversations (real db-v1 expert trajectories as agent data, multi-turn chats built from Python's standard
library docstrings as general data, mixed at eta 0.2), same Llama 3 tokenizer (built offline from the llama-models
wheel), same chat template (ours, with ``{% generation %}`` markers for TRL's assistant masks), same max_len, in one
run. TRL 1.16 settings: ``assistant_only_loss=True, packing=True, packing_strategy="bfd"``. The two must train on
identical tokens: every example's (input_ids, labels) from TRL's packed rows, split back by ``seq_lengths``, must
equal ours.

    python benchmarks/data_prep.py            # full
    python benchmarks/data_prep.py --quick    # < 1 minute; last line is JSON with ratio and packing_efficiency
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agenttuning.data.example import Example, from_trajectory
from agenttuning.data.general import stdlib_examples
from agenttuning.data.mix import MixSampler
from agenttuning.envs.base import get
from agenttuning.policies.baselines import ExpertPolicy
from agenttuning.rollout.engine import rollout
from agenttuning.tokens.length import fit_all
from agenttuning.tokens.masks import render_batch
from agenttuning.tokens.offline import llama3_tokenizer
from agenttuning.tokens.packing import pack


def build_corpus(n: int, eta: float, seed: int = 0) -> list[Example]:
    """n examples, agent share ~eta: db expert trajectories and 1-6 turn chats from stdlib docstrings."""
    env = get("db")
    n_agent = max(1, round(n * eta * 1.2))
    with tempfile.TemporaryDirectory() as d:
        s = rollout(env, env.tasks("train")[:n_agent], ExpertPolicy(env), Path(d) / "t.jsonl", concurrency=4)
    agent = [from_trajectory(t) for t in s.trajectories]
    singles = stdlib_examples(seed=seed)
    rng = random.Random(seed)
    general = []
    for i in range(n):
        k = rng.randint(1, 6)
        picked = [singles[rng.randrange(len(singles))] for _ in range(k)]
        turns = [t for ex in picked for t in ex.turns]
        general.append(Example(id=f"chat-{i}", source="general", family="stdlib", turns=turns))
    data = {"agent": agent, "general": general}  # the first n draws of the trainer's own sampler
    return [data[src][i] for src, i in MixSampler(len(agent), len(general), eta, seed).take(n)]


def ours(examples: list[Example], tok, max_len: int):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    enc = render_batch([ex.turns for ex in examples], tok, "llama3")
    fitted, _ = fit_all(enc, max_len, "truncate_turns")
    rows, report = pack([e for e in fitted if e is not None], max_len)
    return time.perf_counter() - t0, enc, rows, report


def trl_prepare(examples: list[Example], tok, max_len: int, workdir: str):  # type: ignore[no-untyped-def]
    import datasets
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    datasets.disable_caching()
    datasets.utils.logging.disable_progress_bar()
    data = datasets.Dataset.from_list(
        [{"messages": [{"role": t.role, "content": t.content} for t in ex.turns]} for ex in examples]
    )
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    args = SFTConfig(output_dir=workdir, max_length=max_len, packing=True, packing_strategy="bfd",
                     assistant_only_loss=True, use_cpu=True, bf16=False, report_to=[], shuffle_dataset=False,
                     dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data.select(range(2)), processing_class=tok)
    t0 = time.perf_counter()
    out = trainer._prepare_dataset(data, tok, args, True, None, "bench")
    elapsed = time.perf_counter() - t0
    return elapsed, out


def split_trl_rows(out) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:  # type: ignore[no-untyped-def]
    examples = []
    for row in out:
        start = 0
        for n in row["seq_lengths"]:
            ids, labels = row["input_ids"][start : start + n], row["labels"][start : start + n]
            examples.append((tuple(ids), tuple(labels[1:])))  # the first label of an example is never trained
            start += n
    return sorted(examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=None, help="conversations (default 300 quick, 3000 full)")
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--eta", type=float, default=0.2)
    args = ap.parse_args()
    n = args.n or (300 if args.quick else 3000)

    tok = llama3_tokenizer()
    # llama3_tokenizer() carries our Llama 3 template, whose {% generation %} markers TRL's assistant masks need
    flagged = build_corpus(n, args.eta)
    # TRL's assistant mask trains every assistant turn; AgentInstruct's in-context turns ("Ok.", the one-shot
    # example) carry loss=false. Time both on the same work: every assistant turn trained. What TRL would wrongly
    # train with the real flags is counted separately below.
    examples = [ex.model_copy(update={"turns": [t.model_copy(update={"loss": True}) if t.role == "assistant" else t
                                                for t in ex.turns]}) for ex in flagged]
    render_batch([examples[0].turns], tok, "llama3")  # warm up (template binding) outside the timing

    t_ours, enc, rows, report = ours(examples, tok, args.max_len)
    tokens = sum(len(e.input_ids) for e in enc)
    fits = [i for i, e in enumerate(enc) if len(e.input_ids) <= args.max_len]
    with tempfile.TemporaryDirectory() as d:
        t_trl, trl_out = trl_prepare([examples[i] for i in fits], tok, args.max_len, d)
    trl_tokens = sum(len(r["input_ids"]) for r in trl_out)
    ours_fit = sorted((tuple(enc[i].input_ids), tuple(enc[i].labels[1:])) for i in fits)
    identical = split_trl_rows(trl_out) == ours_fit
    trl_eff = trl_tokens / (len(trl_out) * args.max_len)

    with_flags = render_batch([ex.turns for ex in flagged], tok, "llama3")
    extra = sum(e.num_trained for e in enc) - sum(e.num_trained for e in with_flags)
    ours_tps = tokens / t_ours
    trl_tps = trl_tokens / t_trl
    table = Table(title=f"data prep · {n} conversations · Llama 3 tokenizer · max_len {args.max_len}",
                  header_style="bold")
    for col in ("pipeline", "tokens", "seconds", "tokens/s", "rows", "packing eff."):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    table.add_row("agenttuning prepare", f"{tokens:,}", f"{t_ours:.2f}", f"{ours_tps:,.0f}", str(report.rows),
                  f"{report.efficiency:.2%}")
    table.add_row("TRL 1.16 SFTTrainer (bfd)", f"{trl_tokens:,}", f"{t_trl:.2f}", f"{trl_tps:,.0f}", str(len(trl_out)),
                  f"{trl_eff:.2%}")
    Console(width=120).print(table)
    print(f"identical trained tokens on the {len(fits)} examples that fit: {identical}")
    print(f"with AgentInstruct's per-turn loss flags, TRL's assistant mask would also train {extra:,} in-context "
          f"tokens ('Ok.', one-shot replies) that the paper does not train; agenttuning honours the flags")
    print(json.dumps({
        "benchmark": "data_prep", "conversations": n, "max_len": args.max_len, "tokens": tokens,
        "ours_tokens_per_s": round(ours_tps), "trl_tokens_per_s": round(trl_tps), "ratio": round(ours_tps / trl_tps, 2),
        "packing_efficiency": round(report.efficiency, 4), "trl_packing_efficiency": round(trl_eff, 4),
        "identical_tokens": identical, "trl_extra_in_context_tokens": extra,
    }))


if __name__ == "__main__":
    main()
