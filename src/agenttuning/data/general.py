"""Offline general-domain chat data: real human-written text from Python's own standard library.

AgentTuning mixes agent trajectories with general instruction data (ShareGPT in the paper, section 2.2) so the tuned
model keeps its general abilities. Hub datasets cannot be downloaded here, so this builds instruction/response pairs
from the docstrings of the standard library's source files, which every Python installation ships: the docstrings
are read with :mod:`ast` (nothing is imported or executed), and each becomes a question about a function, class or
module answered with its documentation. Deterministic for a given Python version.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from agenttuning.data.example import Example
from agenttuning.schema import Turn

SOURCE = "Python {version} standard-library docstrings ({path})"
_QUESTIONS = {
    "module": ["What does the Python module `{name}` provide?", "Give an overview of the `{name}` module."],
    "class": ["What is `{name}` in Python's standard library?", "Describe the class `{name}`."],
    "function": ["What does `{name}` do?", "Explain the Python function `{name}`."],
}


def stdlib_dir() -> Path:
    """Where this interpreter's pure-Python standard library lives."""
    return Path(sysconfig.get_paths()["stdlib"])


def _skip(path: Path, root: Path) -> bool:
    rel = path.relative_to(root).parts
    return any(p in ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo") or p.startswith("_")
               for p in rel[:-1]) or rel[-1].startswith("_")  # fmt: skip


def iter_docstrings(root: Path | None = None, *, min_chars: int = 120) -> Iterator[tuple[str, str, str]]:
    """Yield ``(kind, qualified name, docstring)`` for public modules, classes and functions, in a sorted order."""
    root = root or stdlib_dir()
    for path in sorted(root.rglob("*.py")):
        if _skip(path, root):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        doc = ast.get_docstring(tree)
        if doc and len(doc) >= min_chars:
            yield "module", module, doc
        for node in tree.body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                if doc and len(doc) >= min_chars:
                    yield kind, f"{module}.{node.name}", doc
                if isinstance(node, ast.ClassDef):  # public methods too
                    for sub in node.body:
                        if isinstance(sub, ast.FunctionDef) and not sub.name.startswith("_"):
                            doc = ast.get_docstring(sub)
                            if doc and len(doc) >= min_chars:
                                yield "function", f"{module}.{node.name}.{sub.name}", doc


def stdlib_examples(n: int | None = None, *, seed: int = 0, root: Path | None = None) -> list[Example]:
    """Up to ``n`` single-turn general examples (question -> docstring), in a seeded stable order."""
    items = list(iter_docstrings(root))

    def key(item: tuple[str, str, str]) -> bytes:
        return hashlib.sha256(f"{seed}/{item[1]}".encode()).digest()

    items.sort(key=key)
    out = []
    for kind, name, doc in items[:n] if n is not None else items:
        pick = key((kind, name, doc))[0] % len(_QUESTIONS[kind])
        question = _QUESTIONS[kind][pick].format(name=name)
        out.append(Example(
            id=f"stdlib-{name}", source="general", family="stdlib",
            turns=[Turn(role="user", content=question), Turn(role="assistant", content=doc, loss=True)],
        ))  # fmt: skip
    return out
