"""The one reader of training data: a file, a folder or a Hugging Face dataset id, in whichever layout it is.

Every stage that reads examples (prepare, decontaminate, the general check) calls :func:`read_data`. It reads

- **local data**: a file or a folder of them (recursively; JSONL, JSON list or parquet, as
  :mod:`agenttuning.data.rows` iterates them), each file in the layout its first record shows
  (:func:`detect_layout`), so one folder may hold AgentInstruct family files beside a ShareGPT file;
- **a Hugging Face dataset** (``THUDM/AgentInstruct``, a ShareGPT set) when the string is not an existing local
  path: :func:`datasets.load_dataset` loads every split, each split read in the layout of its first row. A split
  named for a family (``os``, ``db``, ... in ``THUDM/AgentInstruct``) names the family of records that hold none;
  a generic split (``train``, ``test``, ...) leaves the dataset's name. ``hf:`` in front forces this path, also
  for a local folder laid out as a dataset repository (a ``README.md`` whose ``configs`` name the splits).

The layouts (converted by :mod:`agenttuning.data.formats`, the one module of conversions): our Example records,
trajectories (:class:`~agenttuning.schema.Trajectory`), AgentInstruct (``conversations`` with ``loss`` flags),
ShareGPT (``conversations``) and OpenAI ``messages``. Bad records are :class:`~agenttuning.jsonl.RecordError`
naming ``file:line`` (``id[split]:row`` for a Hub dataset). Offline, a dataset id that is not cached fails within
seconds with :class:`DataSourceError` saying how to get the data, not after the Hub client's retries.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agenttuning.data.example import Example, Source
from agenttuning.data.formats import LAYOUTS, Layout, Loaded, example_from_record, read_layout
from agenttuning.data.rows import SUFFIXES, convert_rows

__all__ = ["DataSourceError", "Layout", "Loaded", "detect_layout", "read_data"]

HUB_PREFIX = "hf:"
HUB_PROBE_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_GENERIC_SPLITS = frozenset({"train", "test", "validation", "valid", "dev", "eval"})
_AGENTINSTRUCT_FROM = frozenset({"human", "gpt"})


class DataSourceError(ValueError):
    """A data source that names neither a local file or folder nor a dataset the Hub (or its cache) can give."""


def detect_layout(record: dict[str, Any]) -> Layout:
    """Which layout one record is in, from its keys (ValueError when none fits).

    ``turns`` + ``source``: Example records; ``task`` + ``steps``: trajectories; ``messages``: OpenAI;
    ``conversations``: AgentInstruct when some turn has a non-null ``loss`` and every turn is ``human`` or ``gpt``
    (the published layout), ShareGPT otherwise.

    >>> detect_layout({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})
    'sharegpt'
    """
    if "turns" in record and "source" in record:
        return "examples"
    if "task" in record and "steps" in record:
        return "trajectories"
    if "messages" in record:
        return "openai"
    convs = record.get("conversations")
    if isinstance(convs, list):
        turns = [c for c in convs if isinstance(c, dict)]
        flagged = any(c.get("loss") is not None for c in turns)
        return "agentinstruct" if flagged and all(c.get("from") in _AGENTINSTRUCT_FROM for c in turns) else "sharegpt"
    raise ValueError(f"unrecognised record layout: expected 'turns' and 'source' (examples), 'task' and 'steps' "
                     f"(trajectories), 'messages' (OpenAI) or 'conversations' (AgentInstruct, ShareGPT); "
                     f"got keys {sorted(record)[:6]}")  # fmt: skip


def read_data(
    source: str | os.PathLike[str],
    *,
    layout: Layout | None = None,
    source_kind: Source | None = None,
    family: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Loaded:
    """Every example in ``source`` (see the module docstring), validated, with drops counted and layouts named.

    Args:
        source: a file, a folder, a Hugging Face dataset id, or ``hf:`` + an id or a local dataset folder.
        layout: read everything in this layout instead of detecting it.
        source_kind: ``agent`` or ``general`` for every example, instead of the layout's own
            (:func:`~agenttuning.data.formats.example_from_record`).
        family: the family of examples whose records hold none (default: the file name, or the split).
        cache_dir: where :func:`datasets.load_dataset` caches a Hub dataset (default: ``HF_DATASETS_CACHE``).
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")
    spec = os.fspath(source)
    if spec.startswith(HUB_PREFIX):
        return _read_hub(spec.removeprefix(HUB_PREFIX), layout, source_kind, family, cache_dir)
    if Path(spec).exists() or not looks_like_hub_id(spec):
        return read_layout(spec, layout or detect_layout, family=family, source=source_kind)
    return _read_hub(spec, layout, source_kind, family, cache_dir)


def looks_like_hub_id(spec: str) -> bool:
    """``owner/name`` or ``name``, not ending like a data file (a missing ``chat.jsonl`` stays a missing file)."""
    return _HUB_ID.fullmatch(spec) is not None and not spec.endswith(SUFFIXES)


# ------------------------------------------------------------------------------------------------------------
# Hugging Face datasets


def _read_hub(
    spec: str, layout: Layout | None, source_kind: Source | None, family: str | None,
    cache_dir: str | os.PathLike[str] | None,
) -> Loaded:  # fmt: skip
    import datasets  # here: importing it costs half a second that local reads need not pay

    local = Path(spec).exists()
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if not local and not offline and not _hub_reachable(datasets.config.HF_ENDPOINT):
        raise DataSourceError(_unreachable(spec, datasets.config.HF_ENDPOINT))
    try:
        splits = datasets.load_dataset(spec, cache_dir=os.fspath(cache_dir) if cache_dir else None)
    except ConnectionError as e:  # offline mode without a cached copy, or the Hub going away mid-load
        cache = cache_dir or datasets.config.HF_DATASETS_CACHE
        why = f"offline mode (HF_HUB_OFFLINE) finds no copy of it in the datasets cache {cache}" if offline else str(e)
        raise DataSourceError(f"{spec!r} is not a local file or folder, and {why}. {_HOW_TO_FIX.format(id=spec)}") \
            from None  # fmt: skip
    except FileNotFoundError as e:  # DatasetNotFoundError and DataFilesNotFoundError are FileNotFoundErrors
        what = "datasets.load_dataset finds no data in it" if local else "not a local file or folder, nor a Hub dataset"
        raise DataSourceError(f"{spec!r}: {what}: {e}") from None
    except ValueError as e:  # a dataset with several configurations and no default, say
        raise DataSourceError(f"{spec}: datasets.load_dataset failed: {e}") from None
    name = Path(spec.rstrip("/")).name.lower()
    examples: list[Example] = []
    dropped: Counter[str] = Counter()
    layouts: dict[str, Layout] = {}
    for split, rows in splits.items():
        where = f"{spec.rstrip('/')}[{split}]"
        fam = family or (name if str(split).lower() in _GENERIC_SPLITS else str(split))
        kind, items = _read_split(where, rows, layout, fam, str(split), source_kind)
        if kind is not None:
            layouts[where] = kind
        examples += [x for x in items if isinstance(x, Example)]
        dropped.update(x for x in items if isinstance(x, str))
    return Loaded(examples, dropped, [], layouts)


def _read_split(
    where: str, rows: Any, layout: Layout | None, family: str, split: str, source_kind: Source | None
) -> tuple[Layout | None, list[Example | str]]:
    """One split's rows converted in ``layout`` (default: the first row's); RecordError names ``where:row``."""
    kind = layout

    def one(record: dict[str, Any], line: int) -> Example | str:
        nonlocal kind
        kind = kind or detect_layout(record)
        return example_from_record(record, kind, family=family, default_id=f"{split}-{line}", source=source_kind)

    located_rows = ((i, f"row {i}", r) for i, r in enumerate(rows, 1))
    items = [x for _, x in convert_rows(where, located_rows, one)]
    return kind, items


def _hub_reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``endpoint`` (or to the HTTPS proxy, when one is set) opens within ``timeout``.

    A second's test instead of the Hub client's own: offline, :func:`datasets.load_dataset` retries for ~25 s before
    it gives up. The connection is made in a daemon thread, so a name lookup that hangs cannot hold the caller.
    """
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(k)), None)  # fmt: skip
    if proxy and "://" not in proxy:
        proxy = f"http://{proxy}"
    target = urlsplit(proxy or endpoint)
    if target.hostname is None:
        return False
    port = target.port or (443 if target.scheme == "https" else 80)
    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((target.hostname, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(opened)


_HOW_TO_FIX = (
    "To use it offline: on a machine with internet, either download the files "
    "(`hf download {id} --repo-type dataset --local-dir DIR`) and give DIR (or hf:DIR to keep its split names), "
    "or load it once with datasets.load_dataset('{id}') and copy the datasets cache here, then set HF_HUB_OFFLINE=1."
)


def _unreachable(spec: str, endpoint: str) -> str:
    return (f"{spec!r} is not a local file or folder, and the Hugging Face Hub ({endpoint}) cannot be reached to load "
            f"it as a dataset id. {_HOW_TO_FIX.format(id=spec)}")  # fmt: skip
