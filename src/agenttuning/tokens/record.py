"""One tokenised example, from rendering to the trainer: :class:`TokenRecord`, and its row in a prepared file.

A single example has one type wherever it goes:

* rendering makes it (:func:`agenttuning.tokens.masks.render`: ``input_ids``, ``labels``, ``turn_ends``), and the
  ``prepare`` stage adds the example's ``id``, ``source`` and ``family``
  (:func:`agenttuning.tokens.prepare.encode_examples`);
* length handling cuts it between turns (:func:`agenttuning.tokens.length.fit`: a TokenRecord in, a shorter one out,
  its metadata kept);
* the ``prepare`` stage writes it as a row (:meth:`TokenRecord.to_row`) and the trainer reads that row back
  (:meth:`TokenRecord.from_row`), so the columns of a prepared file are spelled in one place;
* the trainer holds many of them flat (:class:`agenttuning.train.data.TokenTable`: numpy arrays, so a million
  examples cost no Python objects), and ``table.example(i)`` is a TokenRecord again;
* packing (:func:`agenttuning.tokens.packing.build_rows`) and prefix sharing
  (:func:`agenttuning.tokens.prefix_tree.tree_layout`) take TokenRecords.

What is *not* a TokenRecord is more than one example: a packed row (:class:`~agenttuning.tokens.packing.PackedRow`:
records concatenated, positions restarting at each), a shared-prefix layout
(:class:`~agenttuning.tokens.prefix_tree.TreeLayout`), a global batch and the tensors of a micro-batch
(:mod:`agenttuning.train.batches`).

The row of one example (a prepared file written with ``pack=false``, what the trainer reads) has the columns
:data:`ROW_COLUMNS`, in that order (the order is part of the file's bytes: equal inputs give byte-identical files).
A row without ``turn_ends`` (or with ``null``) reads as one turn spanning the whole example: nothing says where it
could be cut, so an over-long one is dropped rather than cut. A packed row (``position_ids``, ``seq_lens``) holds
several examples and is refused: read as one example, they would attend to each other.

    >>> r = TokenRecord([1, 2, 3], [-100, 2, 3], [1, 3], id="db-7", source="agent", family="db")
    >>> r.to_row()  # doctest: +NORMALIZE_WHITESPACE
    {'id': 'db-7', 'source': 'agent', 'family': 'db',
     'input_ids': [1, 2, 3], 'labels': [-100, 2, 3], 'turn_ends': [1, 3]}
    >>> TokenRecord.from_row(r.to_row()) == r, TokenRecord.from_row({"input_ids": [4, 5], "labels": [4, 5]}).turn_ends
    (True, [2])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["IGNORE_INDEX", "PACKED_COLUMNS", "ROW_COLUMNS", "TokenRecord"]

#: Label of a token that carries no loss (``torch.nn.CrossEntropyLoss``'s default ``ignore_index``).
IGNORE_INDEX = -100

#: The columns of one example's row, in the order they are written.
ROW_COLUMNS = ("id", "source", "family", "input_ids", "labels", "turn_ends")

#: Columns that only a packed row (several examples) has.
PACKED_COLUMNS = ("position_ids", "seq_lens")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One example as tokens: ``labels[j]`` is ``input_ids[j]`` where trained, else :data:`IGNORE_INDEX` (aligned
    with ``input_ids``: the model shifts them); ``turn_ends[i]`` is the token index where turn ``i`` ends, exclusive
    (``turn_ends[-1] == len(input_ids)``). ``id``, ``source`` and ``family`` name the example it came from (the
    prepare stage writes them; None where unknown: the trainer does not read them).
    """

    input_ids: list[int]
    labels: list[int]
    turn_ends: list[int]
    id: str | None = None
    source: str | None = None
    family: str | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        """Number of tokens that carry loss."""
        return sum(1 for y in self.labels if y != IGNORE_INDEX)

    def to_row(self) -> dict[str, Any]:
        """The row written for this example: :data:`ROW_COLUMNS`, in order (lists, ready for JSONL or parquet)."""
        return {"id": self.id, "source": self.source, "family": self.family, "input_ids": list(self.input_ids),
                "labels": list(self.labels), "turn_ends": list(self.turn_ends)}  # fmt: skip

    @classmethod
    def from_row(cls, row: Any) -> TokenRecord:
        """The record of a row (:meth:`to_row`'s output, or any mapping with at least ``input_ids`` and ``labels``).

        ``ValueError`` saying what is wrong for a row that is not one example's tokens: not a mapping, no
        ``input_ids`` or ``labels``, lengths that differ, or a packed row.
        """
        if not isinstance(row, Mapping) or row.get("input_ids") is None or row.get("labels") is None:
            raise ValueError("expected an object with input_ids and labels")
        if any(row.get(c) is not None for c in PACKED_COLUMNS):
            raise ValueError("packed rows: prepare training data with --no-pack "
                             "(the trainer packs its own batches from the eta-mixture)")  # fmt: skip
        ids, labels, ends = row["input_ids"], row["labels"], row.get("turn_ends")
        ids = ids if type(ids) is list else list(ids)
        labels = labels if type(labels) is list else list(labels)
        if len(ids) != len(labels):
            raise ValueError(f"input_ids ({len(ids)}) and labels ({len(labels)}) differ in length")
        ends = [len(ids)] if ends is None else ends if type(ends) is list else list(ends)
        return cls(ids, labels, ends, row.get("id"), row.get("source"), row.get("family"))
