"""Seeded generators of conversations for the template and mask tests (no hypothesis: fixed, batched, reproducible).

:func:`conversations`: adversarial conversations, every feature that can break a mask: multi-turn, optional
system turn, unicode (emoji with ZWJ/skin tones/flags, CJK, RTL Arabic/Hebrew, combining marks), code blocks,
whitespace runs, leading/trailing whitespace and newlines, empty turns, very long turns, contents that spell
control tokens (``<|eot_id|>``, ``[INST]``, ``</s>``...), and assistant turns with loss True and False mixed.

:func:`agent_conversations`: long AgentInstruct-like ReAct episodes (instruction, "Ok.", Thought/Action replies,
observations), for throughput measurements.
"""

from __future__ import annotations

import random
import re

from agenttuning.schema import Turn

#: Control-token spellings that contents may contain (the tokenizers' own and other templates').
SPECIAL_SPELLINGS = (
    "<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>",
    "<|reserved_special_token_5|>", "[INST]", "[/INST]", "<s>", "</s>", "<unk>", "<pad>", "[TOOL_CALLS]",
    "[SYSTEM_PROMPT]", "[control_8]", "<|im_start|>", "<|im_end|>", "<<SYS>>", "<</SYS>>",
)

_WORDS = (
    "the agent should query database table SELECT name FROM users WHERE id = 42 ; answer is Paris because "
    "observation shows result error invalid action click search buy put apple in fridge 3 go to cabinet 1 "
    "Thought: Action: Final Answer: I think we need to check it's they're don't won't 3.14159 1,000,000 2024-01-31"
).split()
_UNICODE = (
    "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷🇯🇵", "日本語のテキスト", "中文文本，标点。", "한국어", "Ελληνικά", "русский", "עברית",
    "العربية مرحبا", "हिन्दी", "ไทย", "e\u0301", "Å", "ﬁ", "\u00a0", "\u200b", "\u2028", "€£¥", "≤≥≠∞", "½", "١٢٣",
)
_WS = (" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", " \n", "\n ", " \n\n ", "\u3000")
_EDGE = ("", " ", "\n", "\n\n", "  \n", "\t", " \n\n ", "\r\n", "\n\t")
_CODE = (
    "```python\ndef f(x):\n    return x ** 2  # square\n\n\tif x:\n\t\tpass\n```",
    "```sql\nSELECT name, COUNT(*) FROM t WHERE a >= 10 GROUP BY name ORDER BY 2 DESC;\n```",
    "```bash\nls -la | grep '\\.py$' && echo \"done\" > /dev/null\n```",
    '{"key": [1, 2, {"nested": null}], "s": "\\u00e9"}',
    "<html><body class=\"x\">&amp; &lt;</body></html>",
)


def _fragment(rng: random.Random, special: bool) -> str:
    r = rng.random()
    if special and r < 0.15:
        return rng.choice(SPECIAL_SPELLINGS)
    if r < 0.55:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12)))
    if r < 0.7:
        return rng.choice(_UNICODE)
    if r < 0.85:
        return rng.choice(_WS)
    if r < 0.95:
        return rng.choice(_CODE)
    return "Thought: " + " ".join(rng.choice(_WORDS) for _ in range(5)) + "\nAction: " + rng.choice(_WORDS)


def content(rng: random.Random, *, special: bool = False, long: bool = False) -> str:
    """One turn's text: fragments joined by nothing or whitespace, with optional edge whitespace."""
    if rng.random() < 0.06:
        return ""
    n = rng.randint(200, 800) if long else rng.randint(1, 8)
    parts = []
    for _ in range(n):
        parts.append(_fragment(rng, special))
        parts.append(rng.choice(("", " ", " ", "\n", rng.choice(_WS))))
    text = "".join(parts)
    if rng.random() < 0.25:
        text = rng.choice(_EDGE) + text
    if rng.random() < 0.25:
        text = text + rng.choice(_EDGE)
    return text


def conversation(rng: random.Random, *, free_order: bool = False) -> list[Turn]:
    """One conversation; ``free_order`` allows any role order (system anywhere, consecutive same roles)."""
    special = rng.random() < 0.2  # a fifth of the conversations spell control tokens somewhere
    turns = []
    if not free_order and rng.random() < 0.3:
        turns.append(Turn(role="system", content=content(rng, special=special)))
    n = rng.randint(1, 12)
    for i in range(n):
        if free_order:
            role = rng.choice(("system", "user", "assistant", "assistant", "user"))
        else:
            role = "user" if i % 2 == 0 else "assistant"
        long = rng.random() < 0.01
        loss = (rng.random() < 0.7) if role == "assistant" else None
        turns.append(Turn(role=role, content=content(rng, special=special, long=long), loss=loss))
    return turns


def conversations(n: int, seed: int, *, free_order: float = 0.0) -> list[list[Turn]]:
    """``n`` conversations from ``seed``; a ``free_order`` fraction of them in any role order."""
    rng = random.Random(seed)
    return [conversation(rng, free_order=rng.random() < free_order) for _ in range(n)]


def spelling_pattern(names) -> re.Pattern[str]:  # noqa: ANN001 - an iterable of token strings
    """A regex finding any of ``names`` (a tokenizer's added-token strings) in a text."""
    return re.compile("|".join(map(re.escape, sorted(names, key=len, reverse=True))))


def spells_control_token(turns: list[Turn], pattern: re.Pattern[str]) -> bool:
    """Whether any content contains a control-token spelling (see :func:`spelling_pattern`)."""
    return any(pattern.search(t.content) for t in turns)


# -- AgentInstruct-like episodes, for throughput --------------------------------------------------------------------

_INSTRUCTION = (
    "You are an agent that answers questions about a SQL database. You can run one SQL statement per turn. "
    "Reply with a Thought explaining your reasoning, then an Action: either Operation with a SQL block, or "
    "Final Answer with the answer list. Tables may be large; use LIMIT. Every statement must be valid SQLite. "
)


def agent_conversation(rng: random.Random, target_chars: int) -> list[Turn]:
    """A ReAct episode of about ``target_chars`` characters (about 2.8 characters per Llama 3 token)."""
    turns = [
        Turn(role="user", content=_INSTRUCTION * rng.randint(1, 3)),
        Turn(role="assistant", content="Ok.", loss=False),
        Turn(role="user", content="Question: " + " ".join(rng.choice(_WORDS) for _ in range(30))),
    ]
    size = sum(len(t.content) for t in turns)
    while size < target_chars:
        thought = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(10, 60)))
        sql = f"SELECT {rng.choice(_WORDS)}, COUNT(*) FROM t{rng.randint(1, 9)} WHERE x = {rng.randint(0, 999)};"
        reply = f"Thought: {thought}\nAction: Operation\n```sql\n{sql}\n```"
        rows = ", ".join(f"('{rng.choice(_WORDS)}', {rng.randint(0, 10**6)})" for _ in range(rng.randint(1, 40)))
        turns.append(Turn(role="assistant", content=reply, loss=True))
        turns.append(Turn(role="user", content=f"[{rows}]"))
        size += len(reply) + len(turns[-1].content)
    turns.append(Turn(role="assistant", content="Thought: done.\nAction: Answer\nFinal Answer: [\"Paris\"]", loss=True))
    return turns


def agent_conversations(n: int, seed: int, *, min_tokens: int = 2000, max_tokens: int = 4000) -> list[list[Turn]]:
    rng = random.Random(seed)
    return [agent_conversation(rng, int(rng.randint(min_tokens, max_tokens) * 2.8)) for _ in range(n)]
