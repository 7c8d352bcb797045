"""The package layout (issue 12): no import cycles, the data model imports no stage, names say what differs.

Imports are read from the source with :mod:`ast`, so imports inside functions count (a lazy import hides a cycle
from the interpreter, not from a reader); ``if TYPE_CHECKING:`` blocks do not, as they never run.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path


import agenttuning

ROOT = Path(agenttuning.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of ours by dotted name (a package by its ``__init__``)."""
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST):
    """Import statements that run: everything but the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for sub in child.orelse:
                yield from _import_nodes(ast.Module(body=[sub], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def _ours(name: str) -> str | None:
    """The module of ours a dotted name refers to (``agenttuning.train.tree_attention``, or the package when the name
    is an attribute of it), or None for third-party names."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Modules of ours that ``module`` imports, lazily or not."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("agenttuning.") and (target := _ours(name)) not in (None, "agenttuning", module):
                found.add(target)  # type: ignore[arg-type]
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def package_of(module: str) -> str:
    """The top-level package or module under ``agenttuning``: ``agenttuning.data.formats`` -> ``data``."""
    return module.split(".")[1] if "." in module else module


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_the_graph_sees_lazy_imports_and_skips_type_checking_ones():
    assert "agenttuning.rollout.react" in GRAPH["agenttuning.data.formats"]
    assert "agenttuning.train.tree_attention" in GRAPH["agenttuning.train.trainer"]  # `from pkg import module`, lazy
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_schema_imports_no_other_package_of_ours():
    """The data model is a leaf: every stage imports it, so it imports none of them (``rollout`` least of all)."""
    assert GRAPH["agenttuning.schema"] == set()


def test_env_base_imports_no_environment():
    """Built-in environments register through entry points, as a third party's would; the base names none."""
    families = {m for m in GRAPH["agenttuning.envs.base"] if m.startswith("agenttuning.envs.")}
    assert families == set()


def test_no_import_cycle_between_modules():
    assert _cycles(GRAPH) == []


def test_no_import_cycle_between_packages():
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        packages[package_of(module)] |= {package_of(t) for t in targets} - {package_of(module)}
    assert _cycles(dict(packages)) == []


# names shared on purpose, because they mean the same thing in each place
SAME_MEANING = {
    "main": "a module's entry point (cli, python -m agenttuning.train)",
    # a CLI command and the stage function it runs
    "rollout": "agenttuning rollout runs rollout.engine.rollout",
    "decontaminate": "agenttuning decontaminate runs stages.decontaminate.run, made of data.decontam.decontaminate",
    "run": "each stage module's entry point, stages.<name>.run(config, inputs, out)",
    "train": "agenttuning train runs train.trainer.train",
    "serve": "agenttuning serve runs serve.app.serve",
}


def _public_functions() -> dict[str, list[str]]:
    where: dict[str, list[str]] = defaultdict(list)
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
                where[node.name].append(module)
    return where


def _one_per_environment(modules: list[str]) -> bool:
    """Each environment family defines the same hook once (``agenttuning.envs.<family>...``)."""
    families = [m.split(".")[2] for m in modules if m.startswith("agenttuning.envs.") and m.count(".") >= 2]
    return len(families) == len(modules) and len(set(families)) == len(families)


def test_no_two_public_functions_share_a_name():
    shared = {
        name: modules
        for name, modules in _public_functions().items()
        if len(modules) > 1 and name not in SAME_MEANING and not _one_per_environment(modules)
    }
    assert shared == {}, "rename so that each name says what it does, or list it in SAME_MEANING with why"
