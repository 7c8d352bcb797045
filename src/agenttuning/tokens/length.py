"""Length handling: make every tokenised example fit the training context, cutting only between turns.

AgentTuning trains on long multi-turn trajectories with a 4,096-token context (Zeng et al. 2023, §3.1 training
setup); a 1,024-token cap such as TRL's ``SFTConfig.max_length`` default keeps under half of their tokens. An example
that does not fit is either dropped, or cut at a turn boundary: we keep the longest prefix that ends right after an
*assistant* turn and still fits, so that the kept example still ends on a trained turn and never holds half a turn
(a cut mid-turn would teach the model to stop an action or thought in the middle). If even the first assistant turn
does not fit, the example is dropped.

Everything here is a pure function over :class:`~agenttuning.tokens.record.TokenRecord` s — ``input_ids``,
``labels`` (aligned with ``input_ids``, ``-100`` = no loss; the model shifts them) and ``turn_ends``
(``turn_ends[i]`` is the exclusive token index where turn ``i`` ends) — plus, per example, which turns are assistant
turns (``is_assistant``; derived from the labels when not given: a turn is an assistant turn when any of its tokens
carries a label). A cut record keeps its ``id``, ``source`` and ``family``. The prepare stage fits rendered records,
the trainer the records it reads back from prepared rows (:func:`agenttuning.train.data.load_token_table`).

Every decision is counted in a :class:`LengthReport` (examples kept / cut / dropped, tokens and trained tokens
total / kept / lost); reports add up, so shards can be fitted separately and summed.

    >>> from agenttuning.tokens.record import TokenRecord
    >>> ex = TokenRecord(list(range(10)), [-100, -100, 2, 3, -100, -100, 6, 7, 8, 9], turn_ends=[2, 4, 6, 10])
    >>> kept, report = fit(ex, 8)            # turns: user 0..2, assistant 2..4, user 4..6, assistant 6..10
    >>> kept.input_ids, kept.turn_ends       # cut after the first assistant turn: the second one does not fit
    ([0, 1, 2, 3], [2, 4])
    >>> report.cut, report.tokens_lost, report.trained_lost
    (1, 6, 4)
    >>> fit(ex, 8, policy="drop")[0] is None
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agenttuning.tokens.record import IGNORE_INDEX, TokenRecord

DEFAULT_MAX_LEN = 4096
"""The paper's training context (AgentTuning §3.1): 4,096 tokens."""

Policy = Literal["truncate_turns", "drop"]
POLICIES: tuple[Policy, ...] = ("truncate_turns", "drop")


@dataclass(frozen=True)
class LengthReport:
    """What fitting examples to ``max_len`` kept and lost, under one ``policy``.

    ``kept`` examples fitted unchanged, ``cut`` ones were shortened at a turn boundary, ``dropped`` ones are gone.
    ``tokens_*`` count every token, ``trained_*`` only tokens with a label (``label != -100``);
    ``*_total = *_kept + *_lost`` always. Reports with the same policy and ``max_len`` add (``a + b``, ``sum(...)``).
    """

    policy: Policy
    max_len: int
    kept: int = 0
    cut: int = 0
    dropped: int = 0
    tokens_total: int = 0
    tokens_kept: int = 0
    trained_total: int = 0
    trained_kept: int = 0

    @property
    def examples(self) -> int:
        """Examples seen: ``kept + cut + dropped``."""
        return self.kept + self.cut + self.dropped

    @property
    def tokens_lost(self) -> int:
        return self.tokens_total - self.tokens_kept

    @property
    def trained_lost(self) -> int:
        return self.trained_total - self.trained_kept

    @property
    def trained_kept_fraction(self) -> float:
        """Share of the trained tokens that survive (1.0 when there were none)."""
        return self.trained_kept / self.trained_total if self.trained_total else 1.0

    def __add__(self, other: LengthReport) -> LengthReport:
        if not isinstance(other, LengthReport):
            return NotImplemented
        if (self.policy, self.max_len) != (other.policy, other.max_len):
            raise ValueError(
                f"cannot add length reports of different settings: "
                f"{self.policy}@{self.max_len} + {other.policy}@{other.max_len}"
            )
        counts = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in _COUNT_FIELDS}
        return LengthReport(policy=self.policy, max_len=self.max_len, **counts)

    def __radd__(self, other: Any) -> LengthReport:
        if other == 0:  # so that sum(reports) works
            return self
        return NotImplemented

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict (for ``metrics.json``), derived counts included."""
        out = dataclasses.asdict(self)
        out.update(
            examples=self.examples,
            tokens_lost=self.tokens_lost,
            trained_lost=self.trained_lost,
            trained_kept_fraction=self.trained_kept_fraction,
        )
        return out


_COUNT_FIELDS = [f for f in dataclasses.fields(LengthReport) if f.name not in ("policy", "max_len")]


def trained_tokens(labels: Iterable[int]) -> int:
    """Number of tokens that carry a loss (``label != -100``)."""
    return sum(1 for label in labels if label != IGNORE_INDEX)


def assistant_turns(record: TokenRecord) -> list[bool]:
    """Per turn, whether any of its tokens carries a label: the default notion of an assistant (trained) turn."""
    flags, start = [], 0
    for end in record.turn_ends:
        flags.append(any(label != IGNORE_INDEX for label in record.labels[start:end]))
        start = end
    return flags


def fit(
    record: TokenRecord,
    max_len: int = DEFAULT_MAX_LEN,
    *,
    policy: Policy = "truncate_turns",
    is_assistant: Sequence[bool] | None = None,
) -> tuple[TokenRecord | None, LengthReport]:
    """Fit one example into ``max_len`` tokens: ``(example or None, report)``.

    An example of at most ``max_len`` tokens comes back unchanged (the same object). A longer one is dropped
    (``policy="drop"``), or (``"truncate_turns"``) cut to ``input_ids[:turn_ends[i]]`` for the last assistant turn
    ``i`` with ``turn_ends[i] <= max_len`` — dropped if there is none. ``is_assistant[i]`` says whether turn ``i``
    is an assistant turn; by default a turn is one when it carries a label. The cut example is a new record with
    ``input_ids``, ``labels`` and ``turn_ends`` shortened and the rest (``id``, ``source``, ``family``) kept.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown length policy {policy!r}; expected one of {POLICIES}")
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    _validate(record)
    n, trained = len(record.input_ids), trained_tokens(record.labels)
    report = LengthReport(policy=policy, max_len=max_len, tokens_total=n, trained_total=trained)

    if n <= max_len:
        return record, dataclasses.replace(report, kept=1, tokens_kept=n, trained_kept=trained)

    end = _cut_point(record, max_len, is_assistant) if policy == "truncate_turns" else None
    if end is None:
        return None, dataclasses.replace(report, dropped=1)
    turns = sum(1 for e in record.turn_ends if e <= end)
    cut = dataclasses.replace(
        record,
        input_ids=list(record.input_ids[:end]),
        labels=list(record.labels[:end]),
        turn_ends=list(record.turn_ends[:turns]),
    )
    kept_trained = trained_tokens(record.labels[:end])
    return cut, dataclasses.replace(report, cut=1, tokens_kept=end, trained_kept=kept_trained)


def fit_all(
    records: Iterable[TokenRecord],
    max_len: int = DEFAULT_MAX_LEN,
    policy: Policy = "truncate_turns",
    *,
    is_assistant: Sequence[Sequence[bool] | None] | None = None,
) -> tuple[list[TokenRecord], LengthReport]:
    """:func:`fit` over many examples: ``(surviving examples in input order, summed report)``.

    ``is_assistant``, if given, holds one per-turn flag list (or ``None`` to derive it) per example.
    """
    records = list(records)
    if is_assistant is not None and len(is_assistant) != len(records):
        raise ValueError(f"is_assistant has {len(is_assistant)} entries for {len(records)} examples")
    kept: list[TokenRecord] = []
    report = LengthReport(policy=policy, max_len=max_len)
    for k, record in enumerate(records):
        flags = is_assistant[k] if is_assistant is not None else None
        out, one = fit(record, max_len, policy=policy, is_assistant=flags)
        report = report + one
        if out is not None:
            kept.append(out)
    return kept, report


def compare_policies(
    records: Iterable[TokenRecord],
    max_lens: Iterable[int] = (1024, 2048, DEFAULT_MAX_LEN),
    *,
    is_assistant: Sequence[Sequence[bool] | None] | None = None,
) -> dict[tuple[Policy, int], LengthReport]:
    """Reports for every policy and context length, to choose ``max_len`` knowing what each choice loses."""
    records = list(records)
    return {
        (policy, max_len): fit_all(records, max_len, policy, is_assistant=is_assistant)[1]
        for max_len in max_lens
        for policy in POLICIES
    }


def _cut_point(record: TokenRecord, max_len: int, is_assistant: Sequence[bool] | None) -> int | None:
    """End (exclusive) of the longest prefix that stops right after an assistant turn and fits; None if none."""
    flags = assistant_turns(record) if is_assistant is None else is_assistant
    if len(flags) != len(record.turn_ends):
        raise ValueError(f"is_assistant has {len(flags)} flags for {len(record.turn_ends)} turns")
    best = None
    for end, assistant in zip(record.turn_ends, flags, strict=True):
        if end > max_len:
            break  # turn_ends are non-decreasing: no later turn fits either
        if assistant and end > 0:
            best = end
    return best


def _validate(record: TokenRecord) -> None:
    n = len(record.input_ids)
    if len(record.labels) != n:
        raise ValueError(f"labels ({len(record.labels)}) and input_ids ({n}) differ in length")
    previous = 0
    for end in record.turn_ends:
        if not previous <= end <= n:
            raise ValueError(f"turn_ends must be non-decreasing within [0, {n}], got {list(record.turn_ends)}")
        previous = end


__all__ = [
    "DEFAULT_MAX_LEN",
    "IGNORE_INDEX",
    "POLICIES",
    "LengthReport",
    "Policy",
    "assistant_turns",
    "compare_policies",
    "fit",
    "fit_all",
    "trained_tokens",
]
