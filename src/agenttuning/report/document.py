"""A tiny document model rendered twice: to Markdown (``report.md``) and to self-contained HTML (``report.html``).

The report is built once as a list of blocks, so the two files always say the same thing; nothing is parsed back
from Markdown. Text is plain, with three inline marks only: ``**bold**``, ```code``` and ``[text](href)``. In
HTML every piece of text is escaped first and only those marks become tags, so a model name, a note or a path
holding ``<script>`` is shown, never run.

    >>> to_html_inline("**a** <b> `x<y` [t](plots/a.png)")
    '<strong>a</strong> &lt;b&gt; <code>x&lt;y</code> <a href="plots/a.png">t</a>'
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "Bullets", "Code", "Figure", "Heading", "Para", "Table", "to_html", "to_html_inline",
           "to_markdown"]  # fmt: skip


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass(frozen=True)
class Para:
    text: str
    cls: str = ""  # HTML class: "note", "muted", "not-run"


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # one of l/r/c per column; default: first left, the rest right
    caption: str = ""
    emphasis: frozenset[int] = field(default_factory=frozenset)  # row indices drawn as summary rows (HTML)

    def aligns(self) -> str:
        return self.align or "l" + "r" * (len(self.header) - 1)


@dataclass(frozen=True)
class Figure:
    path: str  # relative to the report directory, e.g. "plots/env_scores.png"
    alt: str
    caption: str = ""


Block = Heading | Para | Bullets | Code | Table | Figure


# ------------------------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(t: Table) -> str:
    """A GitHub-flavoured Markdown table."""
    rule = {"l": "---", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(_md_cell(h) for h in t.header) + " |",
             "|" + "|".join(rule[a] for a in t.aligns()) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append("> " + b.text.replace("\n", "\n> ") if b.cls == "note" else b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {i}" for i in b.items))
        elif isinstance(b, Code):
            out.append(f"```\n{b.text}\n```")
        elif isinstance(b, Table):
            out.append(markdown_table(b) + (f"\n\n{b.caption}" if b.caption else ""))
        elif isinstance(b, Figure):
            out.append(f"![{b.alt}]({b.path})" + (f"\n\n*{b.caption}*" if b.caption else ""))
    return "\n\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------------------
# HTML

_INLINE = re.compile(r"\*\*(?P<b>.+?)\*\*|`(?P<c>[^`]+)`|\[(?P<t>[^\]]+)\]\((?P<h>[^)\s]+)\)")
_SAFE_HREF = re.compile(r"^(https?://|#|[A-Za-z0-9_./-]+$)")


def to_html_inline(text: str) -> str:
    """Escape ``text`` and turn the three inline marks into tags (links only to relative paths, #anchors, http)."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()], quote=False))
        if m.group("b") is not None:
            out.append(f"<strong>{to_html_inline(m.group('b'))}</strong>")
        elif m.group("c") is not None:
            out.append(f"<code>{html.escape(m.group('c'), quote=False)}</code>")
        elif _SAFE_HREF.match(m.group("h")):
            out.append(f'<a href="{html.escape(m.group("h"))}">{html.escape(m.group("t"), quote=False)}</a>')
        else:
            out.append(html.escape(m.group(0), quote=False))
        pos = m.end()
    out.append(html.escape(text[pos:], quote=False))
    return "".join(out)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(t: Table) -> str:
    cls = {"l": "l", "r": "r", "c": "c"}
    head = "".join(f'<th class="{cls[a]}">{to_html_inline(h)}</th>' for h, a in zip(t.header, t.aligns(), strict=True))
    body = []
    for i, row in enumerate(t.rows):
        cells = "".join(f'<td class="{cls[a]}">{to_html_inline(c)}</td>' for c, a in zip(row, t.aligns(), strict=True))
        body.append(f'<tr class="summary">{cells}</tr>' if i in t.emphasis else f"<tr>{cells}</tr>")
    caption = f'<p class="caption">{to_html_inline(t.caption)}</p>' if t.caption else ""
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>' \
           f"{caption}</div>"  # fmt: skip


def to_html(blocks: Sequence[Block], *, title: str, css: str, script: str, base_dir: Path) -> str:
    """One self-contained page: inline CSS and script, every figure inlined as a base64 PNG data URI."""
    parts: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
            parts.append(f"<h{b.level}{anchor}>{to_html_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            cls = f' class="{b.cls}"' if b.cls else ""
            parts.append(f"<p{cls}>{to_html_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{to_html_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            parts.append(f"<pre><code>{html.escape(b.text, quote=False)}</code></pre>")
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        elif isinstance(b, Figure):
            caption = f"<figcaption>{to_html_inline(b.caption)}</figcaption>" if b.caption else ""
            parts.append(f'<figure><img class="plot" src="{_data_uri(base_dir / b.path)}" '
                         f'alt="{html.escape(b.alt)}">{caption}</figure>')  # fmt: skip
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{css}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(parts)
        + f"\n</main>\n<script>\n{script}</script>\n</body>\n</html>\n"
    )
