"""Chat templates as structured renderers: for every turn, the markup before its content and the markup after it.

A Jinja chat template says how a conversation becomes *text*; a loss mask needs to know which *tokens* came from
which turn's content. So every template here is data: a turn renders as ``before + content + after``, where

* ``before`` depends on the turn's role and the previous turn's role (``None`` for the first turn): the role
  header, and whatever goes between two turns (a ``<s>`` per round in Llama 2, a system block merged into the first
  user message, ...);
* ``after`` depends on the turn's role only: the end-of-turn markup (``<|eot_id|>``, `` </s>``, ...). For a trained
  assistant turn it is trained with the content: the model must learn to stop.

Markup is a tuple of parts: plain text, or a :class:`Special` control token (a named token such as ``<|eot_id|>``,
or the tokenizer's own bos/eos). Rendering the first ``k`` turns is always a prefix of rendering them all (a turn's
markup never depends on later turns), which is what lets a mask be cut per turn (habit 5 of ARCHITECTURE.md).
:mod:`agenttuning.tokens.masks` turns conversations into ids and labels with these.

Shipped (:func:`get_template`, :data:`TEMPLATES`):

* ``llama2-chat``: Llama-2-chat, the base model of AgentLM (Zeng et al., 2023, section 3.1)::

      <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST] ...

  ``<s>``/``</s>`` are the tokenizer's bos/eos; ``[INST]`` is text (Llama 2 has no such token; where a vocabulary
  has one, e.g. Mistral's, it becomes that control token, as it would in the rendered text). ``llama2-chat-default-
  system`` puts :data:`LLAMA2_DEFAULT_SYSTEM_PROMPT` in front of the first user message of conversations without a
  system turn; ``agentlm`` does the same with AgentLM's fixed :data:`AGENTLM_SYSTEM_PROMPT`.
* ``llama3``: ``<|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>...``, as
  :data:`~.chat_templates.LLAMA3_CHAT_TEMPLATE` and Meta's ``ChatFormat`` (contents verbatim, no trimming).
* ``mistral``: ``<s>[INST]{user}[/INST]{assistant}</s>[INST]...`` with ``[INST]``/``[/INST]`` control tokens
  (Mistral v3 / Tekken). A system message goes in front of the *first* user message (``[INST]{system}\\n\\n{user}
  [/INST]``); mistral-common puts it in front of the last one, which is not prefix-preserving.
* ``chatml``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``. ``<|im_start|>``/``<|im_end|>`` are control tokens
  where the vocabulary has them (Qwen...), text where it does not.
* the model's own: :func:`from_jinja` turns a tokenizer's Jinja ``chat_template`` into a structured template by
  rendering probe conversations. A template that rewrites contents (Meta's Llama 3 template ``| trim``-s them) or
  whose markup depends on more than the previous turn's role is used as it is instead (:class:`RenderedTemplate`:
  each conversation rendered by Jinja, turn by turn); one that is not prefix-preserving is refused (``ValueError``
  saying what differs).

Example::

    >>> t = get_template("llama2-chat")
    >>> from agenttuning.schema import Turn
    >>> t.render_text([Turn(role="user", content="Hi"), Turn(role="assistant", content="Hello", loss=True)],
    ...               bos="<s>", eos="</s>")
    '<s>[INST] Hi [/INST] Hello </s>'
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from agenttuning.schema import Turn

__all__ = [
    "AGENTLM_SYSTEM_PROMPT",
    "BOS",
    "EOS",
    "LLAMA2_DEFAULT_SYSTEM_PROMPT",
    "ROLES",
    "TEMPLATES",
    "ChatTemplate",
    "RenderedTemplate",
    "Special",
    "from_jinja",
    "get_template",
    "template_names",
]

ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Special:
    """A control token in a template's markup: ``token`` names it (``"<|eot_id|>"``), or ``alias`` picks the
    tokenizer's ``bos``/``eos`` token. It must be one of the tokenizer's added tokens, and is inserted by id."""

    token: str | None = None
    alias: Literal["bos", "eos"] | None = None

    def resolve(self, bos: str | None, eos: str | None) -> str:
        if self.token is not None:
            return self.token
        value = bos if self.alias == "bos" else eos
        if value is None:
            raise ValueError(f"the template needs the tokenizer's {self.alias} token, and the tokenizer has none")
        return value


#: The tokenizer's beginning-of-sequence / end-of-sequence token (``<s>``/``</s>`` for Llama 2 and Mistral).
BOS = Special(alias="bos")
EOS = Special(alias="eos")

Markup = tuple["str | Special", ...]

#: Llama-2-chat's default system prompt (``DEFAULT_SYSTEM_PROMPT`` of Meta's ``llama`` repository).
LLAMA2_DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)

#: AgentLM's fixed system prompt (the AgentTuning repository's README: "The models follow the conversation format
#: of Llama-2-chat, with system prompt fixed as ...").
AGENTLM_SYSTEM_PROMPT = "You are a helpful, respectful and honest assistant."


@dataclass(frozen=True, eq=False)
class ChatTemplate:
    """A chat template as data: per turn, ``before[(previous role, role)] + content + after[role]``.

    ``before`` holds only the role transitions the template allows (a missing one makes :meth:`turn_markup` raise
    ``ValueError``); ``None`` as the previous role means the first turn, so conversation-start markup (bos) lives
    there. ``generation_prompt`` is what a prompt for a new assistant reply ends with after a user turn.
    """

    name: str
    before: Mapping[tuple[str | None, str], Markup]
    after: Mapping[str, Markup]
    generation_prompt: Markup = ()
    description: str = ""
    source: str | None = field(default=None, repr=False)  # the Jinja source, for templates made by from_jinja

    def turn_markup(self, turns: Sequence[Turn]) -> Iterator[tuple[Markup, Markup]]:
        """Yield ``(before, after)`` for each turn; ``ValueError`` names the first role order the template lacks."""
        prev: str | None = None
        for i, turn in enumerate(turns):
            role = turn.role
            try:
                before = self.before[(prev, role)]
                after = self.after[role]
            except KeyError:
                where = "as the first turn" if prev is None else f"after {'an' if prev == 'assistant' else 'a'} {prev} turn"
                allowed = ", ".join(f"{p or 'start'}->{r}" for p, r in self.before)
                raise ValueError(
                    f"template {self.name!r} cannot render turn {i} ({role}) {where}; it allows: {allowed}"
                ) from None
            yield before, after
            prev = role

    def render_text(self, turns: Sequence[Turn], *, bos: str | None = None, eos: str | None = None) -> str:
        """The conversation as text, control tokens spelled out (what a Jinja template would render)."""
        return "".join(b + c + a for b, c, a in self.segments(turns, bos=bos, eos=eos))

    def segments(
        self, turns: Sequence[Turn], *, bos: str | None = None, eos: str | None = None
    ) -> list[tuple[str, str, str]]:
        """Per turn, ``(before, content, after)`` as rendered text: joined, they are :meth:`render_text`, and the
        first ``k`` of them render the first ``k`` turns. Contents are verbatim here (see :class:`RenderedTemplate`
        for templates that rewrite them)."""
        return [
            (markup_text(before, bos, eos), turn.content, markup_text(after, bos, eos))
            for (before, after), turn in zip(self.turn_markup(turns), turns, strict=True)
        ]


def markup_text(markup: Markup, bos: str | None, eos: str | None) -> str:
    """Markup spelled out as text (control tokens as their strings)."""
    return "".join(p if isinstance(p, str) else p.resolve(bos, eos) for p in markup)


# --------------------------------------------------------------------------------------------------------------
# The templates we ship


def _llama2(name: str, default_system: str | None, description: str) -> ChatTemplate:
    sys_open, sys_close = "[INST] <<SYS>>\n", "\n<</SYS>>\n\n"
    first_user: Markup = (BOS, "[INST] ") if default_system is None else (BOS, sys_open + default_system + sys_close)
    return ChatTemplate(
        name=name,
        before={
            (None, "system"): (BOS, sys_open),
            (None, "user"): first_user,
            ("system", "user"): (),  # the system block and the first user message share one [INST]
            ("user", "assistant"): (" ",),
            ("assistant", "user"): (BOS, "[INST] "),
        },
        after={"system": (sys_close,), "user": (" [/INST]",), "assistant": (" ", EOS)},
        # Llama 2's tokenizer folds the space after [/INST] into the reply's first token ('▁Hello'): the model writes it
        generation_prompt=(),
        description=description,
    )


def _llama3() -> ChatTemplate:
    sh, eh, eot, bot = (Special(t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                                             "<|begin_of_text|>"))

    def header(role: str) -> Markup:
        return (sh, role, eh, "\n\n")

    before = {(prev, role): ((bot,) if prev is None else ()) + header(role) for prev in (None, *ROLES) for role in ROLES}
    return ChatTemplate(
        name="llama3",
        before=before,
        after={role: (eot,) for role in ROLES},
        generation_prompt=header("assistant"),
        description="Llama 3 / 3.1 instruct: <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>",
    )


def _mistral() -> ChatTemplate:
    inst, end_inst = Special("[INST]"), Special("[/INST]")
    return ChatTemplate(
        name="mistral",
        before={
            (None, "system"): (BOS, inst),
            (None, "user"): (BOS, inst),
            ("system", "user"): (),
            ("user", "assistant"): (),
            ("assistant", "user"): (inst,),
        },
        after={"system": ("\n\n",), "user": (end_inst,), "assistant": (EOS,)},
        generation_prompt=(),
        description="Mistral v3 / Tekken: <s>[INST]{user}[/INST]{assistant}</s>; system before the first user message",
    )


def _chatml() -> ChatTemplate:
    def header(role: str) -> Markup:
        return (f"<|im_start|>{role}\n",)

    return ChatTemplate(
        name="chatml",
        before={(prev, role): header(role) for prev in (None, *ROLES) for role in ROLES},
        after={role: ("<|im_end|>\n",) for role in ROLES},
        generation_prompt=header("assistant"),
        description="ChatML: <|im_start|>{role}\\n{content}<|im_end|>\\n (control tokens where the vocabulary has them)",
    )


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        _llama2("llama2-chat", None, "Llama-2-chat (Meta's format); a system turn goes into the first [INST]"),
        _llama2(
            "llama2-chat-default-system",
            LLAMA2_DEFAULT_SYSTEM_PROMPT,
            "Llama-2-chat, with Meta's default system prompt where a conversation has no system turn",
        ),
        _llama2("agentlm", AGENTLM_SYSTEM_PROMPT, "AgentLM: Llama-2-chat with its fixed system prompt"),
        _llama3(),
        _mistral(),
        _chatml(),
    )
}


def template_names() -> list[str]:
    """Names :func:`get_template` accepts (besides a tokenizer, for the model's own template)."""
    return sorted(TEMPLATES)


def get_template(name_or_tokenizer: str | ChatTemplate | PreTrainedTokenizerBase) -> ChatTemplate:
    """A shipped template by name, or the model's own: a tokenizer's Jinja ``chat_template`` (:func:`from_jinja`).

    ``ValueError`` for an unknown name, a tokenizer without a chat template, or one that cannot be made exact.
    """
    if isinstance(name_or_tokenizer, ChatTemplate):
        return name_or_tokenizer
    if isinstance(name_or_tokenizer, str):
        try:
            return TEMPLATES[name_or_tokenizer]
        except KeyError:
            raise ValueError(
                f"unknown chat template {name_or_tokenizer!r}; choose one of {', '.join(template_names())}, "
                "or pass a tokenizer for the model's own"
            ) from None
    return from_jinja(name_or_tokenizer)


# --------------------------------------------------------------------------------------------------------------
# The model's own template: Jinja -> structured, by rendering probes; or used as it is (RenderedTemplate)

_PROBE_DEPTH = 4  # every role sequence up to this length is rendered (3 + 9 + 27 + 81 = 120 renderings at most)
# Contents a template might rewrite: whitespace it could trim (ASCII and Unicode), markup it could escape, a reasoning
# block it could move. A template renders them verbatim or is used as it is (RenderedTemplate), never mis-structured.
_CHECK_CONTENTS = (
    "  Two spaces, then text.\n", "\n\nafter blank lines", "", "tab\tand trailing space ", "x",
    "<b>a & b</b> \"quoted\" 'single'", "\u3000ideographic and no-break spaces\u00a0",
    "<think>\nreasoning\n</think>\n\nanswer", "{{ not a template }} {% raw %}",
)


def _sentinel(i: int) -> str:
    return f"\u2063CONTENT{i}\u2063"  # invisible separator: no template trims or recognises it


class _NotStructured(ValueError):
    """The template renders conversations turn by turn, but not as role-keyed markup around verbatim contents."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def from_jinja(
    tokenizer: PreTrainedTokenizerBase, chat_template: str | None = None, *, name: str | None = None
) -> ChatTemplate:
    """A Jinja chat template (default: the tokenizer's own) as a :class:`ChatTemplate`: structured where it can be,
    else a :class:`RenderedTemplate` that uses the Jinja template as it is.

    Every role sequence up to four turns is rendered with placeholder contents, each checked to start with the
    rendering of the one turn shorter (prefix-preserving). The template is *structured* when, for each turn, the text
    the turn adds is ``before + content + after``, with ``before`` the same wherever the same role follows the same
    previous role and ``after`` the same for every turn of a role, and conversations with awkward contents
    (whitespace runs, blank lines, empty) render exactly as the Jinja template renders them. A template that rewrites
    contents (``| trim``: Meta's Llama 3 template), numbers its turns or defers a system message into the next turn
    is prefix-preserving but not structured: it becomes a :class:`RenderedTemplate`. Role sequences the template
    rejects (``raise_exception``) are left out, so the result rejects them too. Results are cached per tokenizer and
    template source.

    ``ValueError`` when the template is not prefix-preserving (rendering the first ``k`` turns is not a prefix of
    rendering ``k + 1``: later turns rewrite earlier text, e.g. a system message moved in front of the last user
    message, or a marker on the final turn only), or renders no assistant reply after a user turn.
    """
    source = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):  # several named templates: the default one
        source = source.get("default")
    if not source:
        raise ValueError("the tokenizer has no chat_template; pass a template name (" + ", ".join(template_names()) + ")")
    try:
        cache = _JINJA_CACHE.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no caching
        cache = {}
    key = (source, name, repr(_variables(tokenizer)))  # a changed bos/eos renders differently
    if key not in cache:
        cache[key] = _derive(tokenizer, source, name or "own")
    return cache[key]


_JINJA_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[str, str | None, str], ChatTemplate]] = (
    weakref.WeakKeyDictionary()
)


def _variables(tokenizer: Any) -> dict[str, Any]:
    """What ``apply_chat_template`` passes a template besides the messages: the tokenizer's special tokens."""
    return dict(getattr(tokenizer, "special_tokens_map", None) or {})


def _jinja_render(tokenizer: Any, source: str, roles: Sequence[str], contents: Sequence[str], gen: bool = False) -> str:
    messages = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]
    text = tokenizer.apply_chat_template(messages, chat_template=source, tokenize=False, add_generation_prompt=gen)
    if not isinstance(text, str):
        raise ValueError("apply_chat_template(tokenize=False) did not return text")
    return text


def _derive(tokenizer: Any, source: str, name: str) -> ChatTemplate:
    # 1. render every role sequence the template accepts, each checked against the one turn shorter
    rendered: dict[tuple[str, ...], str] = {(): ""}
    frontier: list[tuple[str, ...]] = [()]
    for _depth in range(_PROBE_DEPTH):
        nxt = []
        for seq in frontier:
            for role in ROLES:
                roles = (*seq, role)
                try:
                    text = _jinja_render(tokenizer, source, roles, [_sentinel(i) for i in range(len(roles))])
                except Exception:  # noqa: BLE001 - the template rejects this role order
                    continue
                if not text.startswith(rendered[seq]):
                    raise ValueError(
                        f"chat template is not prefix-preserving: rendering turns {list(roles)} does not start with "
                        f"the rendering of {list(seq)} (later turns rewrite earlier text, so a loss mask could not "
                        f"be cut per turn).\n  first {len(seq)} turns: {rendered[seq]!r}\n  first {len(roles)} "
                        f"turns: {text!r}\nUse a structured template instead: {', '.join(template_names())}"
                    )
                rendered[roles] = text
                nxt.append(roles)
        frontier = nxt
    reply = rendered.get(("user", "assistant"))
    if reply is None or reply[len(rendered[("user",)]):].count(_sentinel(1)) != 1:
        raise ValueError(
            "chat template renders no assistant reply after a user turn (turns ['user', 'assistant'] render as "
            f"{reply!r}); it cannot be used for training"
        )
    gen = ""
    try:
        with_prompt = _jinja_render(tokenizer, source, ("user",), [_sentinel(0)], gen=True)
        if with_prompt.startswith(rendered[("user",)]):
            gen = with_prompt[len(rendered[("user",)]):]
    except Exception:  # noqa: BLE001 - a template without generation prompt support
        pass
    # 2. structured (fast: one table lookup per turn) where the template is, else the template as it is
    structured: ChatTemplate | None = None
    try:
        structured = _structured(rendered, name, source, gen)
        _check_contents_verbatim(tokenizer, source, structured, rendered)
        return structured
    except _NotStructured as e:
        return RenderedTemplate(  # keeps the markup by role where it is that: a first guess, checked per conversation
            name=name,
            before=structured.before if structured is not None else {},
            after=structured.after if structured is not None else {},
            generation_prompt=(gen,) if gen else (),
            description=f"the tokenizer's own chat template, rendered as it is ({e.reason})",
            source=source,
            variables=_variables(tokenizer),
        )


def _structured(rendered: dict[tuple[str, ...], str], name: str, source: str, gen: str) -> ChatTemplate:
    """What each probed turn added must be before + content + after, the same wherever the roles are the same."""
    before: dict[tuple[str | None, str], str] = {}
    after: dict[str, str] = {}
    for roles, text in rendered.items():
        if not roles:
            continue
        added = text[len(rendered[roles[:-1]]):]
        mark = _sentinel(len(roles) - 1)
        if added.count(mark) != 1 or any(_sentinel(i) in added for i in range(len(roles) - 1)):
            raise _NotStructured(
                "it does not render each turn's content when the conversation ends on that turn",
                f"turns {list(roles)}, the last turn added {added!r}",
            )
        b, a = added.split(mark)
        key = (roles[-2] if len(roles) > 1 else None, roles[-1])
        for table, k, v, what in ((before, key, b, "before"), (after, roles[-1], a, "after")):
            if table.setdefault(k, v) != v:
                raise _NotStructured(
                    "its markup depends on more than the previous turn's role",
                    f"{what} a {roles[-1]} turn in turns {list(roles)}: {v!r}, elsewhere {table[k]!r}",
                )
    return ChatTemplate(
        name=name,
        before={k: (v,) if v else () for k, v in before.items()},
        after={k: (v,) if v else () for k, v in after.items()},
        generation_prompt=(gen,) if gen else (),
        description="the tokenizer's own chat template",
        source=source,
    )


def _check_contents_verbatim(tokenizer: Any, source: str, template: ChatTemplate, rendered: dict) -> None:
    from agenttuning.schema import Turn

    bos, eos = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None)
    for j, roles in enumerate(sorted((r for r in rendered if r), key=len, reverse=True)[:12]):
        contents = [_CHECK_CONTENTS[(i + j) % len(_CHECK_CONTENTS)] for i in range(len(roles))]  # each, every role
        expected = _jinja_render(tokenizer, source, roles, contents)
        turns = [Turn(role=r, content=c) for r, c in zip(roles, contents, strict=True)]  # type: ignore[arg-type]
        got = template.render_text(turns, bos=bos, eos=eos)
        if got != expected:
            raise _NotStructured(
                "it rewrites message contents (e.g. '| trim')",
                f"turns {list(roles)} render as {expected!r}, verbatim would be {got!r}",
            )


_MARKER = "AgentTuningContentMarker"  # ASCII letters: trim, escape and tojson leave them as they are
_MARKER_RUNS = re.compile(_MARKER + "(Z*)")


def _marker(turns: Sequence[Turn]) -> str:
    """A placeholder content that no content of the conversation contains, in one pass over them: the marker and
    one more ``Z`` than any content has after it (content is adversarial: it may spell markers)."""
    runs = [len(z) for t in turns if _MARKER in t.content for z in _MARKER_RUNS.findall(t.content)]
    return _MARKER + "Z" * (max(runs, default=-1) + 1)


@dataclass(frozen=True, eq=False)
class RenderedTemplate(ChatTemplate):
    """A Jinja chat template used as it is: for templates that are prefix-preserving but not structured (they
    rewrite contents, like Meta's Llama 3 template's ``| trim``, number their turns, or defer a system message).

    :meth:`segments` renders each conversation turn by turn: what turn ``i`` adds is the rendering of the first
    ``i + 1`` turns minus that of the first ``i`` (each must start with the one before: ``ValueError`` saying where
    they differ, where a conversation shows the template is not prefix-preserving). Rendering the first ``i`` turns
    plus a marker in place of turn ``i``'s content splits that addition into the markup before the content, the
    content *as the template renders it* (trimmed, escaped, ...) and the markup after it. A trained reply is then
    exactly the tokens the template renders for it: for Meta's Llama 3 template, the trimmed reply and
    ``<|eot_id|>``. A turn whose content the template renders only later (a system message folded into the first
    user message) adds markup only, and its content counts as markup of the later turn.

    Cost: ``n`` Jinja renderings of growing prefixes per ``n``-turn conversation, plus one with every content a
    marker where the markup is the same for the same roles (Meta's Llama 3 template: about twice the time of a
    structured template on agent episodes), else ``n`` more, one per turn.

    ``variables``: the tokenizer's special tokens (``bos_token``...), passed to the template as
    ``apply_chat_template`` passes them.
    """

    variables: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def render_text(self, turns: Sequence[Turn], *, bos: str | None = None, eos: str | None = None) -> str:
        """The conversation as the Jinja template renders it (``bos``/``eos`` come from :attr:`variables`)."""
        return self._render([[_message(t) for t in turns]])[0] if turns else ""

    def turn_markup(self, turns: Sequence[Turn]) -> Iterator[tuple[Markup, Markup]]:
        """``(before, after)`` text of each turn, as :meth:`segments` finds them."""
        for before, _, after in self.segments(turns):
            yield ((before,) if before else ()), ((after,) if after else ())

    def segments(
        self, turns: Sequence[Turn], *, bos: str | None = None, eos: str | None = None
    ) -> list[tuple[str, str, str]]:
        """Per turn, ``(before, content as rendered, after)``; joined, they are :meth:`render_text`."""
        if not turns:
            return []
        messages = [_message(t) for t in turns]
        marker = _marker(turns)
        n = len(turns)
        guess = self._markup_by_role(turns)
        texts = self._render(
            [messages[: i + 1] for i in range(n)] + ([[{**m, "content": marker} for m in messages]] if guess else [])
        )
        prefixes = ["", *texts[:n]]
        if guess is not None and texts[n] != "".join(b + marker + a for b, a in guess):
            guess = None
        if guess is None:  # each turn's markup from the first i turns plus a marker in place of turn i's content
            probes = self._render([[*messages[:i], {**messages[i], "content": marker}] for i in range(n)])
        out: list[tuple[str, str, str]] = []
        for i, turn in enumerate(turns):
            prev, cur = prefixes[i], prefixes[i + 1]
            if not cur.startswith(prev):
                raise ValueError(self._not_prefix(i, prev, cur, f"the first {i + 1} turns"))
            added = cur[len(prev):]
            if guess is not None:
                head, tail = guess[i]
            else:
                if not probes[i].startswith(prev):
                    raise ValueError(self._not_prefix(i, prev, probes[i], f"the first {i} turns and a placeholder"))
                marked = probes[i][len(prev):]
                if marked.count(marker) != 1:
                    if turn.role == "assistant" and turn.loss is True:  # a trained reply: rendered at its own turn
                        raise ValueError(
                            f"chat template {self.name!r} does not render turn {i}'s content (a trained assistant "
                            f"reply) when the conversation ends on it (the turn adds {_clip(added)!r}), so it cannot "
                            "be trained"
                        )
                    out.append((added, "", ""))  # content rendered later (or never): what the turn adds is markup
                    continue
                head, tail = marked.split(marker)
            if not (added.startswith(head) and added.endswith(tail) and len(added) >= len(head) + len(tail)):
                raise ValueError(
                    f"chat template {self.name!r}: the markup around turn {i}'s content ({turn.role}) depends on the "
                    f"content itself, so its tokens cannot be told from the markup: with a placeholder the turn "
                    f"adds {_clip(head)!r} + content + {_clip(tail)!r}, with its content {_clip(added)!r}"
                )
            out.append((head, added[len(head): len(added) - len(tail)], tail))
        return out

    def _markup_by_role(self, turns: Sequence[Turn]) -> list[tuple[str, str]] | None:
        """Each turn's markup from the tables the probes found, where the template has them: one rendering of the
        conversation with every content a marker then checks them all (else each turn is probed: n renderings)."""
        if not self.before:
            return None
        out, prev = [], None
        for turn in turns:
            before, after = self.before.get((prev, turn.role)), self.after.get(turn.role)
            if before is None or after is None:
                return None
            out.append((markup_text(before, None, None), markup_text(after, None, None)))
            prev = turn.role
        return out

    def _render(self, conversations: list[list[dict[str, str]]], gen: bool = False) -> list[str]:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            texts, _ = render_jinja_template(
                conversations, chat_template=self.source, add_generation_prompt=gen, **self.variables
            )
        except Exception as e:  # noqa: BLE001 - raise_exception in the template, or an error it hits
            if len(conversations) > 1:  # name the shortest conversation it cannot render
                for c in sorted(conversations, key=len):
                    self._render([c], gen)
            roles = [m["role"] for m in conversations[0]]
            raise ValueError(f"chat template {self.name!r} cannot render turns {roles}: {e}") from None
        return list(texts)

    def _not_prefix(self, i: int, prev: str, text: str, what: str) -> str:
        d = next((j for j, (x, y) in enumerate(zip(prev, text)) if x != y), min(len(prev), len(text)))
        return (
            f"chat template {self.name!r} is not prefix-preserving on this conversation: rendering {what} does not "
            f"start with the rendering of the first {i} turns; at character {d}, {_clip(prev[max(0, d - 40):d + 40])!r}"
            f" became {_clip(text[max(0, d - 40):d + 40])!r} (a later turn rewrites earlier text, so a loss mask "
            f"cannot be cut per turn). Use a structured template instead: {', '.join(template_names())}"
        )


def _message(turn: Turn) -> dict[str, str]:
    return {"role": turn.role, "content": turn.content}


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit // 2] + " … " + text[-limit // 2:]
