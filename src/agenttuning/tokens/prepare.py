"""The pieces the ``prepare`` stage (:mod:`agenttuning.stages.prepare`) is made of, shared with every caller that
renders examples: loading a tokenizer by name (the real Llama 3, Mistral and Tekken ones build offline) and
rendering examples to ids and loss labels with a chat template, counting the examples a template refuses.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agenttuning.data.example import Example
from agenttuning.tokens.masks import render_batch
from agenttuning.tokens.record import TokenRecord

BUILTIN_TOKENIZERS = ("llama3", "mistral", "tekken")


def load_tokenizer_by_name(name_or_path: str) -> Any:
    """A tokenizer by HF id or local path, a ``.gguf`` file or model alias (:mod:`agenttuning.models`); ``llama3``,
    ``mistral`` and ``tekken`` build the real ones offline."""
    from agenttuning.models import resolve_model
    from agenttuning.tokens import offline

    if name_or_path in BUILTIN_TOKENIZERS and not Path(name_or_path).exists():
        return {"llama3": offline.llama3_tokenizer, "mistral": offline.mistral_tokenizer,
                "tekken": offline.tekken_tokenizer}[name_or_path]()  # fmt: skip
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name_or_path))


def encode_examples(
    examples: Sequence[Example], tokenizer: Any, *, template: str | None = None
) -> tuple[list[TokenRecord | None], Counter[str], str | None]:
    """Render examples to :class:`~agenttuning.tokens.record.TokenRecord` s carrying each example's ``id``,
    ``source`` and ``family`` (one ``encode_batch`` pass over all their text).

    A template that cannot be used at all (unknown name, or the tokenizer's own Jinja template failing the
    exactness checks) is a ValueError with the check's message. An example the template cannot render (a role
    order it does not allow, e.g. a chat that opens with the assistant under ``llama2-chat``) comes back as None
    and is counted, instead of failing the whole stage; the first such message is returned too.
    """
    try:  # bind the template on no conversation: only a template unusable for every example fails here
        render_batch([], tokenizer, template)
    except ValueError as e:
        raise ValueError(f"chat template {template or '(the tokenizer own)'}: {e}") from None
    try:
        rendered: list[TokenRecord] | None = render_batch([ex.turns for ex in examples], tokenizer, template)
    except ValueError:  # some example is refused: render them one by one to count which
        rendered = None
    if rendered is not None:
        return [_named(r, ex) for r, ex in zip(rendered, examples, strict=True)], Counter(), None
    out: list[TokenRecord | None] = []
    dropped: Counter[str] = Counter()
    first: str | None = None
    for ex in examples:
        try:
            out.append(_named(render_batch([ex.turns], tokenizer, template)[0], ex))
        except ValueError as e:
            out.append(None)
            dropped["template_rejects_roles"] += 1
            first = first or f"{ex.id}: {str(e).removeprefix('conversation 0: ')}"
    return out, dropped, first


def _named(record: TokenRecord, example: Example) -> TokenRecord:
    """The rendered record of ``example``, named after it (what the prepare stage writes beside its tokens)."""
    return dataclasses.replace(record, id=example.id, source=example.source, family=example.family)
