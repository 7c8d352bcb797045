"""The half of self-instruct every family shares: reading a teacher's reply into drafts, and saying why one is not kept.

A family that supports self-instruct (:data:`agenttuning.stages.instruct.FAMILIES`) has a module of its own with:

- ``Draft``: a strict pydantic model of one task as the teacher writes it (``extra="forbid"``, ``strict=True``);
- ``CAPS``: ``{field: max characters}`` for its text fields;
- ``REASONS``: the rejection reasons its :func:`draft_task` can give, in the order they are checked;
- ``instruct_prompt(definition, seeds, k) -> list[Turn]``: what the teacher is shown;
- ``read_drafts(text, limit)``: usually ``read_drafts(text, limit, Draft, CAPS)`` from here;
- ``draft_task(definition, draft) -> Task | Rejected``: runs the draft's reference solution in the real
  environment (never ``eval``) and builds the task, or says why not;
- ``solution_key(task) -> str``: two tasks with the same key ask for the same thing, however worded.

The stage (:mod:`agenttuning.stages.instruct`) then grades every task in the environment (expert must win, the
wrong answer must not) and checks novelty, the same way for every family.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["MAX_REPLY_CHARS", "Rejected", "read_drafts"]

MAX_REPLY_CHARS = 64_000  # a reply longer than this is not parsed at all

_FENCE = re.compile(r"\A```[ \t]*(?:json)?[ \t]*\n(.*?)\n?```\s*\Z", re.IGNORECASE | re.DOTALL)


class Rejected(BaseModel):
    """Why a draft (or a whole reply) was not kept: one reason from the stage's list, and a short detail."""

    model_config = ConfigDict(frozen=True)

    reason: str
    detail: str = ""


def read_drafts(text: str, limit: int, model: type[BaseModel], caps: Mapping[str, int]
                ) -> tuple[list[Any], Rejected | None]:  # fmt: skip
    """The teacher's reply as drafts, each a ``model`` instance or the :class:`Rejected` item it could not be
    (``unparsable``, ``too_long`` past a field's cap in ``caps``, ``excess`` beyond ``limit``); or ``([], Rejected)``
    when the reply as a whole is not a JSON array of objects (``unparsable_reply``) or is longer than
    :data:`MAX_REPLY_CHARS` (``reply_too_long``).

    The reply is adversarial text, read strictly: ``json.loads`` only (never ``eval``), the whole reply or the body
    of one ```` ```json ```` fence, a JSON array or ``{"tasks": [...]}``, each item fitting ``model`` exactly.
    """
    if len(text) > MAX_REPLY_CHARS:
        return [], Rejected(reason="reply_too_long", detail=f"{len(text)} characters")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as e:
        return [], Rejected(reason="unparsable_reply", detail=f"not JSON: {str(e)[:120]}")
    if isinstance(value, dict) and set(value) == {"tasks"}:
        value = value["tasks"]
    if not isinstance(value, list):
        return [], Rejected(reason="unparsable_reply", detail=f"a JSON {type(value).__name__}, not an array")
    out: list[Any] = []
    for i, item in enumerate(value):
        if i >= limit:
            out.append(Rejected(reason="excess", detail=f"item {i} beyond the {limit} asked for"))
            continue
        try:
            draft = model.model_validate(item)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"])) or "(item)"
            out.append(Rejected(reason="unparsable", detail=f"{where}: {first['msg']}"[:200]))
            continue
        too_long = [name for name, cap in caps.items() if len(getattr(draft, name) or "") > cap]
        out.append(Rejected(reason="too_long", detail=", ".join(too_long)) if too_long else draft)
    return out, None
