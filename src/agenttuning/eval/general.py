"""General abilities: did agent tuning keep the model's general skills? (AgentTuning §2.2 and §3.3)

The paper mixes general chat into training so that AgentLM keeps its general abilities, and checks them on MMLU,
GSM8K, HumanEval and MT-Bench. Two checks live here:

**1. A built-in offline check** (:func:`evaluate_general`), needing no download: on a held-out slice of general
chat data (by default :func:`held_out_general`, the *tail* of the seeded order of
:func:`agenttuning.data.general.stdlib_examples`, whose *head* is what ``stdlib_examples(n)`` gives for training;
the two are disjoint while ``n_train + n_eval`` stays within the ~2,000 examples), it reports

* **loss** — the mean next-token cross-entropy over every *trained* token of the slice (the assistant turns with
  ``loss=True`` and their end-of-turn markup, exactly the tokens training puts loss on:
  :func:`agenttuning.tokens.masks.render_batch`), token-weighted (total loss / total trained tokens), and
  **perplexity** = ``exp(loss)``. Conversations longer than ``max_length`` tokens are cut there (counted in
  ``truncated``); batches of ``batch_size``, sorted by length, right-padded, one forward pass each
  (``use_cache=False``), the vocabulary projection only at trained positions
  (:func:`agenttuning.train.loss.causal_lm_loss`).
* **exact match** — for each example, the prompt is the conversation up to its first trained assistant turn,
  rendered with the tokenizer's chat template and its generation prompt (as the ``hf:`` policy renders it);
  the model replies greedily, at most ``2 * em_tokens`` new tokens, stopping at its end-of-turn / eos token.
  Both the reply and the reference turn are normalised by :func:`em_key`: strip, keep the first line, strip,
  tokenise that line alone (no special tokens), keep its first ``em_tokens`` tokens, decode, strip. The example
  matches iff the two keys are equal and the reference key is not empty. So a reply matches when its first line
  equals the reference's first line (for lines up to ``em_tokens`` tokens) or starts with the same
  ``em_tokens`` tokens (longer lines). Prompts that leave no room for ``2 * em_tokens`` new tokens in the
  model's context are not scored (``em_skipped``).

**2. lm-evaluation-harness** on MMLU-, GSM8K- (and the plan for HumanEval-) style sets from local files: see
:mod:`agenttuning.eval.harness` (:func:`write_task_dir`, :func:`run_lm_eval`, re-exported here).

Example::

    result = evaluate_general("out/agentlm", n=64)               # a folder or hub id, or (model, tokenizer=tok)
    print(result.loss, result.perplexity, result.exact_match)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from agenttuning.data.example import Example
from agenttuning.eval.harness import run_lm_eval, write_task_dir
from agenttuning.tokens.masks import IGNORE_INDEX, render_batch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from agenttuning.policies.hf import HFPolicy

__all__ = [
    "GeneralEvalResult",
    "em_key",
    "evaluate_general",
    "exact_match_rate",
    "held_out_general",
    "load_general_examples",
    "run_lm_eval",
    "save_general_result",
    "trained_token_losses",
    "write_task_dir",
]


class GeneralEvalResult(BaseModel):
    """Loss / perplexity on trained tokens and the exact-match rate of a held-out general slice.

    Written by :func:`save_general_result` and read back with ``GeneralEvalResult.model_validate_json`` (the
    report does); ``loss`` may be NaN and ``perplexity`` infinite, written as JSON's ``NaN`` / ``Infinity``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: float  # mean cross-entropy per trained token (nats)
    perplexity: float  # exp(loss)
    exact_match: float  # fraction of scored examples whose reply key equals the reference key
    n: int  # examples evaluated
    tokens: int  # trained tokens the loss is averaged over
    truncated: int = 0  # examples cut to max_length for the loss
    em_scored: int = 0  # examples scored for exact match (n - em_skipped)
    em_skipped: int = 0  # prompts with no room to generate within the context
    em_tokens: int = 16  # K of the exact-match key
    details: list[dict[str, Any]] = Field(default_factory=list, repr=False)  # per example: id, loss, match, keys

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        """The fields as a dict (``details`` only when asked for): what :func:`save_general_result` writes."""
        return self.model_dump(exclude=None if details else {"details"})


# ------------------------------------------------------------------------------------------------------------
# Data


def held_out_general(n: int = 64, *, seed: int = 0, root: Path | None = None) -> list[Example]:
    """The last ``n`` examples of ``stdlib_examples(seed=seed)`` (training draws from the head of that order)."""
    from agenttuning.data.general import stdlib_examples

    items = stdlib_examples(seed=seed, root=root)
    return items[-n:] if n > 0 else []


def load_general_examples(source: str | os.PathLike[str]) -> list[Example]:
    """The examples of a file, folder or Hugging Face dataset id, in any layout the reader knows (Example JSONL,
    ShareGPT, OpenAI messages, ...: :func:`~agenttuning.data.reader.read_data`); ValueError when there is none.

    Errors are :class:`~agenttuning.jsonl.RecordError` naming ``file:line``.
    """
    from agenttuning.data.reader import read_data

    examples = read_data(source).examples
    if not examples:
        raise ValueError(f"{source}: no examples")
    return examples


# ------------------------------------------------------------------------------------------------------------
# Exact match


def em_key(text: str, tokenizer: PreTrainedTokenizerBase, k: int) -> str:
    """The exact-match key: first line of ``text`` (stripped), cut to its first ``k`` tokens, decoded, stripped."""
    line = text.strip().split("\n", 1)[0].strip()
    ids = tokenizer(line, add_special_tokens=False)["input_ids"][:k]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _first_trained(ex: Example) -> int:
    return next(i for i, t in enumerate(ex.turns) if t.role == "assistant" and t.loss)


def exact_match_rate(
    examples: Sequence[Example], policy: HFPolicy, *, em_tokens: int = 16, batch_size: int = 8
) -> tuple[float, list[dict[str, Any]]]:
    """``(rate, per-example records)``: greedy replies of ``policy`` scored by :func:`em_key` (module docstring)."""
    tok = policy.tokenizer
    records: list[dict[str, Any]] = []
    jobs: list[tuple[int, list[int]]] = []
    room = 2 * em_tokens
    for i, ex in enumerate(examples):
        at = _first_trained(ex)
        ids = policy.encode(list(ex.turns[:at]))
        reference = ex.turns[at].content
        records.append({"id": ex.id, "target": em_key(reference, tok, em_tokens), "prediction": None, "match": None})
        if policy.max_context_tokens is not None and len(ids) + room > policy.max_context_tokens:
            continue
        jobs.append((i, ids))
    jobs.sort(key=lambda j: len(j[1]))  # similar lengths together: less padding
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s : s + batch_size]
        for (i, _), completion in zip(chunk, policy.generate_batch([ids for _, ids in chunk]), strict=True):
            key = em_key(policy.decode(completion), tok, em_tokens)
            records[i]["prediction"] = key
            records[i]["match"] = bool(records[i]["target"]) and key == records[i]["target"]
    scored = [r["match"] for r in records if r["match"] is not None]
    return (sum(scored) / len(scored) if scored else 0.0), records


# ------------------------------------------------------------------------------------------------------------
# Loss on trained tokens


def _loss_impl(model: Any) -> str:
    from agenttuning.train.loss import model_parts

    try:
        model_parts(model)
    except (ValueError, AttributeError, NotImplementedError):
        return "full"
    return "checkpoint"  # without grad: chunked head + CE at trained positions only


def trained_token_losses(
    examples: Sequence[Example],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    template: Any = None,
    batch_size: int = 8,
    max_length: int | None = None,
) -> tuple[list[tuple[float, int]], int]:
    """``([(loss sum, trained tokens) per example], truncated count)`` under ``torch.inference_mode``."""
    import torch

    from agenttuning.train.loss import causal_lm_loss, trained_mask

    encoded = render_batch([list(ex.turns) for ex in examples], tokenizer, template)
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None) or 4096
    truncated = sum(len(e.input_ids) > max_length for e in encoded)
    rows = [(e.input_ids[:max_length], e.labels[:max_length]) for e in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    impl = _loss_impl(model)
    device = model.device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = max(len(rows[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                x, y = rows[i]
                ids[r, : len(x)] = torch.tensor(x)
                labels[r, : len(y)] = torch.tensor(y)
                mask[r, : len(x)] = 1
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            _, token_losses = causal_lm_loss(model, ids, labels, attention_mask=mask, impl=impl)
            counts = trained_mask(labels).sum(dim=1).tolist()  # row-major order of token_losses
            for i, part in zip(idx, torch.split(token_losses.float().cpu(), counts), strict=True):
                out[i] = (float(part.sum()), int(part.numel()))
    return out, truncated


# ------------------------------------------------------------------------------------------------------------
# The check


def evaluate_general(
    model: str | PreTrainedModel,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    examples: Sequence[Example] | str | os.PathLike[str] | None = None,
    *,
    n: int = 64,
    seed: int = 0,
    batch_size: int = 8,
    em_tokens: int = 16,
    max_length: int | None = None,
    device: str | None = None,
    dtype: str = "auto",
    template: Any = None,
) -> GeneralEvalResult:
    """Loss, perplexity and exact match of ``model`` on held-out general examples (see the module docstring).

    Args:
        model: a hub id or local folder, a ``.gguf`` file or model alias (converted once: :mod:`agenttuning.models`),
            or an in-memory causal LM (then pass ``tokenizer``).
        tokenizer: id/folder or object; default: the model's. It must have a chat template.
        examples: Examples, a file, folder or dataset id of them (:func:`load_general_examples`), or None for
            ``held_out_general(n, seed=seed)``; a given list or file is used whole.
        batch_size: conversations per forward pass and prompts per ``generate``.
        em_tokens: K of the exact-match key.
        max_length: cut longer conversations for the loss (default: the model's ``max_position_embeddings``).
        device, dtype: as for the ``hf:`` policy (an in-memory model stays where it is unless ``device`` is given).
        template: the chat template for the loss rendering (default: the tokenizer's own, which generation uses).
    """
    from agenttuning.policies.hf import HFPolicy

    if em_tokens < 1:
        raise ValueError("em_tokens must be >= 1")
    if examples is None:
        items = held_out_general(n, seed=seed)
    elif isinstance(examples, str | os.PathLike):
        items = load_general_examples(examples)
    else:
        items = list(examples)
    if not items:
        raise ValueError("no examples to evaluate")
    was_training = getattr(model, "training", False)  # HFPolicy puts an in-memory model in eval mode
    policy = HFPolicy(model, tokenizer=tokenizer, device=device, dtype=dtype, max_new_tokens=2 * em_tokens,
                      temperature=0.0, batch_size=batch_size)  # fmt: skip
    try:
        sums, truncated = trained_token_losses(
            items, policy.model, policy.tokenizer, template=template, batch_size=batch_size, max_length=max_length
        )
        em, records = exact_match_rate(items, policy, em_tokens=em_tokens, batch_size=batch_size)
    finally:
        if was_training:
            policy.model.train()
    total = math.fsum(s for s, _ in sums)
    tokens = sum(c for _, c in sums)
    loss = total / tokens if tokens else math.nan
    for r, (s, c) in zip(records, sums, strict=True):
        r["loss"] = s / c if c else math.nan
        r["tokens"] = c
    scored = sum(r["match"] is not None for r in records)
    return GeneralEvalResult(
        loss=loss,
        perplexity=math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf,
        exact_match=em,
        n=len(items),
        tokens=tokens,
        truncated=truncated,
        em_scored=scored,
        em_skipped=len(items) - scored,
        em_tokens=em_tokens,
        details=records,
    )


def save_general_result(result: GeneralEvalResult, path: str | os.PathLike[str]) -> None:
    """Write the result (with per-example details) as JSON."""
    Path(path).write_text(json.dumps(result.to_dict(details=True), indent=2) + "\n", encoding="utf-8")
