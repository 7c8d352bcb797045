"""Stage output folders: a stage's folder holds one run's files, complete, or the previous run's, untouched.

A stage that writes a folder (``filter``, ``mix``, ``prepare``) writes into a fresh hidden folder beside it
(``.<name>.tmp-XXXX``) and swaps that in only when everything is written (:func:`staged_dir`). So files of an
earlier run into the same folder can never be read as this run's (an environment filtered out this time, packed
rows beside unpacked ones), and a failed or killed run leaves the old folder as it was. Swapping is two renames
(the old folder aside, the new one in), then the old one is deleted: a reader sees the old folder or the new one.

Replacing a folder deletes what was in it, so :func:`check_output` first refuses a folder that is not empty and
holds no earlier output of the same stage (its marker file, e.g. ``manifest.json`` with ``"stage": "prepare"``),
unless ``overwrite`` is given, and always refuses an output that contains an input or lies inside an input folder
(the next run would read its own output as input).

A stage that would write no usable rows raises :class:`EmptyOutputError` naming why (what was read, what dropped
it), instead of succeeding with an empty file that a later stage misreads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

PathLike = str | os.PathLike[str]


class EmptyOutputError(ValueError):
    """A stage would write no usable rows; the message says what was read and why every row was dropped."""


def counts(dropped: Mapping[str, int]) -> str:
    """``{"low_reward": 3, "too_long": 1}`` -> ``'low_reward 3, too_long 1'`` (``'none'`` when empty).

    >>> counts({"too_long": 1, "low_reward": 3}), counts({})
    ('low_reward 3, too_long 1', 'none')
    """
    return ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()) if v) or "none"


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_inputs(target: PathLike, inputs: Iterable[PathLike], *, recursive: bool = True) -> None:
    """Refuse (ValueError) an output that is or holds an input, or that a reader of an input folder would read.

    ``recursive``: the stage reads input folders recursively (any data file below); otherwise only ``*.jsonl``
    directly in them (trajectories).
    """
    out = Path(target).expanduser().resolve()
    for i in inputs:
        src = Path(i).expanduser().resolve()
        if _inside(src, out):
            raise ValueError(f"{target}: the output is or holds the input {i}; writing it would replace that "
                             "input: write the output somewhere else")  # fmt: skip
        read = _inside(out, src) if recursive else out.parent == src and out.suffix == ".jsonl"
        if src.is_dir() and read:
            raise ValueError(f"{target}: the output is inside the input folder {i}, so a later run would read "
                             "this output as input: write it somewhere else")  # fmt: skip


def check_output(target: PathLike, *, stage: str, marker: str, overwrite: bool = False,
                 inputs: Iterable[PathLike] = (), recursive: bool = True) -> None:  # fmt: skip
    """Refuse (ValueError) an output folder the stage must not replace; see the module docstring."""
    check_inputs(target, inputs, recursive=recursive)
    out = Path(target)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{target}: exists and is not a folder")
    if not out.exists() or overwrite or not any(out.iterdir()) or _marker_stage(out / marker) == stage:
        return
    raise ValueError(f"{target}: the folder is not empty and holds no earlier {stage} output ({marker}); choose a "
                     "new or empty folder, or pass --overwrite to replace everything in it")  # fmt: skip


def _marker_stage(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable or not JSON: not a marker this module wrote
        return None
    return data.get("stage") if isinstance(data, dict) else None


@contextmanager
def staged_dir(target: PathLike) -> Iterator[Path]:
    """Yield a fresh empty folder beside ``target``; when the block ends without error, it becomes ``target``.

    On an error the fresh folder is deleted and ``target`` is left as it was.
    """
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old)  # an empty folder may be replaced by rename
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)  # put the previous output back
        raise
    shutil.rmtree(old, ignore_errors=True)
