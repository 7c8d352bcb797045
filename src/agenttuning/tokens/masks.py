"""Conversations to token ids and loss labels: the one pure function every stage uses (habit 5 of ARCHITECTURE.md).

:func:`render` / :func:`render_batch` turn turns (:class:`~agenttuning.schema.Turn`) into a
:class:`~agenttuning.tokens.record.TokenRecord` (the one type a tokenised example has, up to the trainer):
``input_ids``, ``labels`` aligned with them (``-100`` where no loss: Hugging Face's convention, the model shifts
internally) and ``turn_ends``. AgentTuning trains only the agent's own replies: the ``loss: true`` turns of the
AgentInstruct layout (Zeng et al., 2023, section 2.1; see :mod:`agenttuning.schema`), so:

* **trained**: the tokens of each assistant turn with ``loss=True``, plus its end-of-turn markup (``<|eot_id|>``,
  `` </s>``...; the model must learn to stop);
* **not trained** (``-100``): system and user turns, assistant turns with ``loss`` False/None, role headers, bos.

How text becomes tokens, exactly:

1. The template (:mod:`.templates`) gives each turn ``before + content + after``. Its markup is split into control
   tokens (inserted by id: declared :class:`~.templates.Special` parts, and any added token the markup text
   spells, as the tokenizer would read it in the rendered text) and text. A model's own Jinja template that
   rewrites contents (Meta's Llama 3 template ``| trim``-s them) is used as it is
   (:class:`~.templates.RenderedTemplate`): the conversation is rendered turn by turn, and ``content`` is the
   content *as the template renders it*, so a trained reply is exactly what the template renders for it (trimmed)
   plus its end-of-turn markup.
2. The text between two control tokens (markup text and contents run together) is one *chunk*. Every chunk of a
   batch is tokenised in one ``tokenizers.Tokenizer.encode_batch`` call (Rust, all cores), with special-token
   recognition off: **content that spells a special token (``<|eot_id|>``, ``[INST]``) is text**, never that
   control token. Hugging Face splits text at added tokens before normalising and pre-tokenising it, so each
   chunk tokenises exactly as in the whole rendered conversation: for contents that spell no added token,
   ``tokenizer(render_text(...), add_special_tokens=False).input_ids == render(...).input_ids``. (Not modelled:
   added tokens with ``lstrip``/``rstrip``, which eat neighbouring whitespace in the whole-text tokenisation; none
   of the Llama 3, Mistral or Tekken tokens has them.)
3. Within a chunk, markup and content can fuse into one token (Llama 2's ``[/INST] `` + ``Hello`` gives
   `` Hello``; Llama 3's ``\\n\\n`` header end + a reply starting ``\\n`` gives ``\\n\\n\\n``). Tokens are assigned
   by the character span each came from:

   **boundary rule**: a token is trained iff its span overlaps a trained span (a ``loss=True`` reply and its
   end-of-turn markup); it belongs to the turn in which its span starts (``turn_ends``). So the trained tokens
   of a turn decode to ``fused + content + end_of_turn``, where ``fused`` is the end of the turn's header that a
   straddling first token carried along ('' unless a token straddles; `` `` for ``llama2-chat``, a header
   ``\\n\\n`` for ``llama3`` replies that start with optional whitespace and a newline, never for ``mistral``,
   whose header ends in a control token). Nothing of a reply is ever left untrained, and nothing after its
   end-of-turn markup is trained where that markup ends in a control token (every shipped template with a
   vocabulary that has its tokens).

``turn_ends[i]`` is the token index where turn ``i`` ends (exclusive): cutting there gives exactly the tokens of
rendering the first ``i + 1`` turns wherever turn ``i`` ends with a control token (every turn of ``llama3`` and
``mistral``; the replies of ``llama2-chat``). Where a turn ends in text and the next begins with text, one token can
span both (``llama2-chat``'s ``\n<</SYS>>\n\n`` + a user message starting with ``\n``; ChatML on a vocabulary
without its tokens); by the rule above it counts in the turn where it starts. The shipped templates are
prefix-preserving by construction, and a Jinja template is checked by rendering (:func:`~.templates.from_jinja`
refuses one that is not; a :class:`~.templates.RenderedTemplate` checks every conversation it renders, and says where
the renderings differ).

Example::

    >>> from agenttuning.schema import Turn
    >>> from agenttuning.tokens.offline import llama3_tokenizer
    >>> tok = llama3_tokenizer()
    >>> enc = render([Turn(role="user", content="Hi"), Turn(role="assistant", content="Hello!", loss=True)],
    ...              tok, "llama3")
    >>> tok.decode([i for i, y in zip(enc.input_ids, enc.labels) if y != IGNORE_INDEX])
    'Hello!<|eot_id|>'
    >>> enc.turn_ends, enc.labels[-4:]  # user turn: bos + header + 'Hi' + eot; then the reply
    ([7, 14], [-100, 9906, 0, 128009])
"""

from __future__ import annotations

import re
import threading
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from agenttuning.tokens.record import IGNORE_INDEX, TokenRecord
from agenttuning.tokens.templates import ChatTemplate, Markup, RenderedTemplate, Special, get_template

if TYPE_CHECKING:
    from rich.text import Text
    from tokenizers import Encoding, Tokenizer
    from transformers import PreTrainedTokenizerBase

    from agenttuning.schema import Turn

__all__ = ["IGNORE_INDEX", "render", "render_batch", "render_text", "visualize"]

_BATCH_CHARS = 4_000_000  # text per encode_batch call: bounds the memory of the Encoding objects


# --------------------------------------------------------------------------------------------------------------
# Public functions


def render(
    turns: Sequence[Turn], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate | str | None = None
) -> TokenRecord:
    """One conversation -> :class:`TokenRecord` (see the module docstring for the rules).

    ``template``: a :class:`~.templates.ChatTemplate`, a shipped template's name, or None for the tokenizer's own
    chat template. ``ValueError`` for a role order the template does not allow, or a template that cannot be exact.
    """
    return render_batch([turns], tokenizer, template)[0]


def render_batch(
    conversations: Sequence[Sequence[Turn]],
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate | str | None = None,
) -> list[TokenRecord]:
    """Many conversations at once: their text chunks go through ``encode_batch`` together (Rust, all cores).

    Same result as :func:`render` on each; a ``ValueError`` names the conversation it is about.
    """
    bound = _bind(tokenizer, template)
    out: list[TokenRecord] = []
    start = 0
    while start < len(conversations):
        plans: list[list[tuple]] = []
        chunks: dict[str, int] = {}  # distinct chunk texts: a prompt repeated across episodes is tokenised once
        size = 0
        stop = start
        while stop < len(conversations) and (stop == start or size < _BATCH_CHARS):
            try:
                plans.append(_plan(conversations[stop], bound, chunks))
            except ValueError as e:
                raise ValueError(f"conversation {stop}: {e}") from None
            size += sum(len(t.content) for t in conversations[stop])
            stop += 1
        texts = list(chunks)
        encodings = bound.vocab.backend.encode_batch(texts, add_special_tokens=False) if texts else []
        out.extend(_assemble(plan, encodings, texts) for plan in plans)
        start = stop
    return out


def render_text(
    turns: Sequence[Turn], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate | str | None = None
) -> str:
    """The conversation as the template renders it as text (control tokens spelled out)."""
    t = _template(tokenizer, template)
    return t.render_text(turns, bos=tokenizer.bos_token, eos=tokenizer.eos_token)


def visualize(encoded: TokenRecord, tokenizer: PreTrainedTokenizerBase, *, max_tokens: int | None = None) -> Text:
    """A ``rich`` Text of the tokens: trained ones green, the rest grey, token boundaries by alternating shade;
    control tokens bold. For ``agenttuning prepare --show K``."""
    from rich.text import Text

    styles = {
        (True, 0): "black on green3", (True, 1): "black on dark_sea_green2",
        (False, 0): "grey70 on grey15", (False, 1): "grey85 on grey23",
    }
    special = set(tokenizer.all_special_ids) | set(_vocab(tokenizer).ids.values())
    text = Text()
    ids, labels = encoded.input_ids, encoded.labels
    n = len(ids) if max_tokens is None else min(len(ids), max_tokens)
    j = k = 0
    prev = 0  # start of the previous piece: decoding with it as context keeps a SentencePiece '▁' as a space
    while j < n:
        context = tokenizer.decode(ids[prev:j])
        end = j + 1
        piece = tokenizer.decode(ids[prev:end])[len(context):]
        while "\ufffd" in piece and end < min(n, j + 4):  # a character split over byte-level tokens: show together
            end += 1
            piece = tokenizer.decode(ids[prev:end])[len(context):]
        trained = labels[j] != IGNORE_INDEX
        style = styles[(trained, k % 2)]
        if ids[j] in special:
            style += " bold"
        text.append(piece, style=style)
        prev, j, k = j, end, k + 1
    if n < len(ids):
        text.append(f" … ({len(ids) - n} more tokens)", style="italic")
    return text


# --------------------------------------------------------------------------------------------------------------
# Binding a template to a tokenizer


class _Vocab:
    """What rendering needs from a tokenizer, built once per tokenizer (cached weakly)."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        original = getattr(tokenizer, "backend_tokenizer", None)
        if original is None:
            raise TypeError("render needs a fast (Rust-backed) Hugging Face tokenizer: tokenizer.backend_tokenizer")
        backend: Tokenizer = Tokenizer.from_str(original.to_str())
        backend.encode_special_tokens = True  # content that spells a special token is text
        backend.no_truncation()
        backend.no_padding()
        backend.post_processor = None  # nothing to add without special tokens, and offsets stay untrimmed
        self.backend = backend
        self.size = len(tokenizer)
        self.bos, self.eos = tokenizer.bos_token, tokenizer.eos_token
        added = original.get_added_tokens_decoder()
        self.ids: dict[str, int] = {tok.content: i for i, tok in added.items()}
        names = sorted(self.ids, key=len, reverse=True)
        self.splitter = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self.bound: dict[int, tuple[ChatTemplate, _Bound]] = {}

    def split(self, text: str) -> list[str | int]:
        """Markup text -> text parts and control ids (at every added token it spells, as the tokenizer would)."""
        if not text:
            return []
        if self.splitter is None:
            return [text]
        return [self.ids[p] if i % 2 else p for i, p in enumerate(self.splitter.split(text)) if p]


Parts = tuple["str | int", ...]


class _Bound:
    """A template resolved for one tokenizer: markup as merged text parts and control ids."""

    def __init__(self, template: ChatTemplate, vocab: _Vocab) -> None:
        self.template = template
        self.vocab = vocab
        self.rendered = isinstance(template, RenderedTemplate)
        self.before = {k: self._resolve(m) for k, m in template.before.items()}
        self.after = {k: self._resolve(m) for k, m in template.after.items()}
        self._split: dict[str, Parts] = {}  # rendered markup text -> parts (headers repeat across conversations)

    def layout(self, turns: Sequence[Turn]) -> Iterator[tuple[Parts, str, Parts]]:
        """Per turn: markup before its content, the content as rendered, markup after it."""
        if self.rendered:
            yield from self._rendered_layout(turns)
            return
        before_table, after_table = self.before, self.after
        prev: str | None = None
        for i, turn in enumerate(turns):
            role = turn.role
            before = before_table.get((prev, role))
            after = after_table.get(role)
            if before is None or after is None:
                list(self.template.turn_markup(turns[: i + 1]))  # raises the ValueError that explains it
                raise ValueError(f"turn {i}: role {role!r} not renderable")  # pragma: no cover - turn_markup raised
            yield before, turn.content, after
            prev = role

    def _rendered_layout(self, turns: Sequence[Turn]) -> Iterator[tuple[Parts, str, Parts]]:
        # The Jinja template rendered this conversation: its markup is read as the tokenizer reads rendered text
        # (every added token it spells is that control token), its contents as text, like a structured template's.
        split = self._split
        for before, content, after in self.template.segments(turns):
            parts = []
            for text in (before, after):
                found = split.get(text)
                if found is None:
                    found = self._resolve((text,))
                    if len(text) <= 256 and len(split) < 4096:  # headers; not markup carrying a deferred content
                        split[text] = found
                parts.append(found)
            yield parts[0], content, parts[1]

    def _resolve(self, markup: Markup) -> tuple[str | int, ...]:
        parts: list[str | int] = []
        for p in markup:
            if isinstance(p, Special):
                token = p.resolve(self.vocab.bos, self.vocab.eos)
                if token not in self.vocab.ids:
                    raise ValueError(
                        f"template {self.template.name!r} needs the control token {token!r}, which this tokenizer "
                        "does not have; choose a template made for this vocabulary"
                    )
                parts.append(self.vocab.ids[token])
            else:
                parts.extend(self.vocab.split(p))
        merged: list[str | int] = []
        for p in parts:  # adjacent text parts become one
            if isinstance(p, str) and merged and isinstance(merged[-1], str):
                merged[-1] += p
            else:
                merged.append(p)
        return tuple(merged)


_VOCABS: weakref.WeakKeyDictionary[Any, _Vocab] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _vocab(tokenizer: Any) -> _Vocab:
    with _LOCK:
        vocab = _VOCABS.get(tokenizer)
        if vocab is None or vocab.size != len(tokenizer) or (vocab.bos, vocab.eos) != (
            tokenizer.bos_token, tokenizer.eos_token,
        ):
            vocab = _VOCABS[tokenizer] = _Vocab(tokenizer)
        return vocab


def _template(tokenizer: Any, template: ChatTemplate | str | None) -> ChatTemplate:
    return get_template(tokenizer if template is None else template)


def _bind(tokenizer: Any, template: ChatTemplate | str | None) -> _Bound:
    t = _template(tokenizer, template)
    vocab = _vocab(tokenizer)
    with _LOCK:
        hit = vocab.bound.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
    bound = _Bound(t, vocab)
    with _LOCK:
        vocab.bound[id(t)] = (t, bound)
    return bound


# --------------------------------------------------------------------------------------------------------------
# The pipeline: plan (markup + contents -> control ids and text chunks), encode chunks in a batch, assemble

_IDS, _CHUNK, _END = 0, 1, 2


def _plan(turns: Sequence[Turn], bound: _Bound, chunks: dict[str, int]) -> list[tuple]:
    """Lay out one conversation as ops: control ids, text chunks (indexed in ``chunks``), turn ends.

    A chunk op carries the trained character spans ``[a, b)`` of its text and the turn ends inside it.
    """
    ops: list[tuple] = []
    buf: list[str] = []
    pos = 0
    spans: list[list[int]] = []
    marks: list[tuple[int, int]] = []

    def flush() -> None:
        nonlocal buf, pos, spans, marks
        if buf:
            chunk = buf[0] if len(buf) == 1 else "".join(buf)
            k = chunks.setdefault(chunk, len(chunks))
            ops.append((_CHUNK, k, spans, marks))
            buf, pos, spans, marks = [], 0, [], []

    def text(s: str, trained: bool) -> None:
        nonlocal pos
        if not s:
            return
        if trained:
            if spans and spans[-1][1] == pos:
                spans[-1][1] = pos + len(s)
            else:
                spans.append([pos, pos + len(s)])
        buf.append(s)
        pos += len(s)

    for i, (turn, (before, content, after)) in enumerate(zip(turns, bound.layout(turns), strict=True)):
        trained = turn.role == "assistant" and turn.loss is True
        for p in before:
            if isinstance(p, str):
                text(p, False)
            else:
                flush()
                ops.append((_IDS, p, False))
        text(content, trained)
        for p in after:
            if isinstance(p, str):
                text(p, trained)
            else:
                flush()
                ops.append((_IDS, p, trained))
        if buf:
            marks.append((i, pos))
        else:
            ops.append((_END, i))
    flush()
    return ops


def _first_ending_after(e: Encoding, pos: int, n: int) -> int:
    """Index of the first token whose span ends after character ``pos`` (n if none)."""
    t = e.char_to_token(pos)
    if t is not None:
        return t
    ends = [b for _, b in e.offsets]  # a character no token covers (a normaliser removed it): search
    return bisect_right(ends, pos)


def _first_starting_at(e: Encoding, pos: int, n: int, length: int) -> int:
    """Index of the first token whose span starts at or after character ``pos`` (n if none)."""
    if pos >= length:
        return n
    t = e.char_to_token(pos)
    if t is None:
        starts = [a for a, _ in e.offsets]
        return bisect_left(starts, pos)
    while t < n and e.token_to_chars(t)[0] < pos:  # a token straddling pos starts before it
        t += 1
    return t


def _assemble(ops: list[tuple], encodings: list[Encoding], chunks: list[str]) -> TokenRecord:
    ids: list[int] = []
    labels: list[int] = []
    turn_ends: dict[int, int] = {}
    for op in ops:
        kind = op[0]
        if kind == _IDS:
            ids.append(op[1])
            labels.append(op[1] if op[2] else IGNORE_INDEX)
        elif kind == _END:
            turn_ends[op[1]] = len(ids)
        else:
            _, k, spans, marks = op
            e = encodings[k]
            tids = e.ids
            n = len(tids)
            base = len(ids)
            if not spans:
                labels += [IGNORE_INDEX] * n
            else:
                length = len(chunks[k])
                done = 0
                for a, b in spans:
                    lo = max(_first_ending_after(e, a, n), done)
                    hi = max(_first_starting_at(e, b, n, length), lo)
                    labels += [IGNORE_INDEX] * (lo - done)
                    labels += tids[lo:hi]
                    done = hi
                labels += [IGNORE_INDEX] * (n - done)
            if marks:
                length = len(chunks[k])
                for turn, p in marks:
                    turn_ends[turn] = base + _first_starting_at(e, p, n, length)
            ids += tids
    return TokenRecord(input_ids=ids, labels=labels, turn_ends=[turn_ends[i] for i in range(len(turn_ends))])
