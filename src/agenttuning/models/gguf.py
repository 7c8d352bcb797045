"""GGUF -> a plain Hugging Face folder, converted once into a content-addressed cache.

transformers reads a GGUF file itself (``from_pretrained(folder, gguf_file=NAME)``): it dequantises every tensor
to float32 and builds the tokenizer from the file's vocabulary, merges and chat template. A model loaded that way
still carries the GGUF quantizer marker, so it refuses ``save_pretrained`` and says it is not trainable. Here the
marker is cleared and the model saved, with its tokenizer, chat template and generation config, as an ordinary
folder of float32 safetensors: trainable, saveable, and loaded in about a second instead of dequantised again.

The cache (:func:`cache_root`: ``$AGENTTUNING_CACHE/models``, default ``~/.cache/agenttuning/models``) holds one
folder per GGUF content and converter version, ``<sha256[:16]>-c<CONVERTER_VERSION>``. A conversion writes into a
temporary folder beside it, writes ``manifest.json`` last, and renames the folder into place, so a folder under
its final name is always complete. Processes converting the same file take a lock (``fcntl.flock``) and the
later ones find the finished folder. After saving, the folder is reloaded and its logits on a short probe are
compared with the GGUF-loaded model's; the difference is recorded in the manifest (a mismatch fails the
conversion and keeps nothing).

:func:`read_header` checks a file is a whole GGUF (magic, version, tensor table, data not truncated) without
loading tensors, so a damaged file gets one clear :class:`~agenttuning.models.sources.ModelSourceError`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agenttuning.models.errors import ModelSourceError

__all__ = [
    "CONVERTER_VERSION",
    "GGUFHeader",
    "cache_root",
    "cached_folder",
    "convert_gguf",
    "read_conversion_manifest",
    "read_header",
]

CONVERTER_VERSION = 1
"""Bump when the conversion changes what it writes: converted folders are named by it, so old ones are not reused."""

GGUF_INSTALL = "pip install gguf"
_PROBE = "The capital of France is Paris. def f(x):\n    return x * 2  # ok"
_MAX_LOGIT_DIFF = 1e-5  # float32 weights saved and reloaded: the same numbers, the same kernels


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where converted models live: ``cache_dir``, else ``$AGENTTUNING_CACHE/models`` (default
    ``~/.cache/agenttuning/models``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    base = os.environ.get("AGENTTUNING_CACHE") or Path.home() / ".cache" / "agenttuning"
    return Path(base).expanduser() / "models"


def cached_folder(sha256: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder the GGUF with this sha256 converts into (whether or not it exists yet)."""
    return cache_root(cache_dir) / f"{sha256[:16]}-c{CONVERTER_VERSION}"


def read_conversion_manifest(folder: str | os.PathLike[str], sha256: str | None = None) -> dict[str, Any] | None:
    """The manifest of a complete conversion in ``folder`` (of the GGUF ``sha256`` when given), else None."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("converter") != CONVERTER_VERSION:
        return None
    if sha256 is not None and manifest.get("sha256") != sha256:
        return None
    return manifest


# ------------------------------------------------------------------------------------------------------------
# The header


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file says about itself (metadata scalars; arrays are only counted)."""

    version: int
    metadata: dict[str, Any]
    tensors: dict[str, tuple[tuple[int, ...], int, int]]  # name -> (dims, ggml type, offset in the data section)
    data_start: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, fh: Any, size: int) -> None:
        self.fh, self.size = fh, size

    def take(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        raw = self.fh.read(n)
        if len(raw) != n:
            raise ValueError("the file ends inside its header")
        return struct.unpack(fmt, raw)[0]

    def string(self) -> str:
        n = self.take("<Q")
        if n > self.size:
            raise ValueError(f"a string of {n} bytes in a {self.size}-byte file")
        raw = self.fh.read(n)
        if len(raw) != n:
            raise ValueError("the file ends inside its header")
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            if item in _SCALARS:  # skip fixed-size items without decoding them
                width = struct.calcsize(_SCALARS[item])
                if count * width > self.size:
                    raise ValueError(f"an array of {count} items in a {self.size}-byte file")
                self.fh.seek(count * width, os.SEEK_CUR)
            else:
                for _ in range(count):
                    self.value(item)
            return count  # arrays are counted, not kept
        raise ValueError(f"unknown metadata value type {kind}")


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse a GGUF file's header and check its tensor data is all there; ModelSourceError if it is not a whole GGUF.

    Needs no third-party package; the tensor sizes are checked only when the ``gguf`` package (which knows every
    ggml type's block size) is installed.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ValueError("it does not start with the GGUF magic bytes")
            r = _Reader(fh, size)
            version = r.take("<I")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version} (supported: 2, 3)")
            n_tensors, n_kv = r.take("<Q"), r.take("<Q")
            if n_tensors > size or n_kv > size:
                raise ValueError("impossible tensor or metadata counts")
            metadata = {}
            for _ in range(n_kv):
                key = r.string()
                metadata[key] = r.value(r.take("<I"))
            tensors = {}
            for _ in range(n_tensors):
                name = r.string()
                n_dims = r.take("<I")
                if n_dims > 8:
                    raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
                dims = tuple(r.take("<Q") for _ in range(n_dims))
                tensors[name] = (dims, r.take("<I"), r.take("<Q"))
            align = int(metadata.get("general.alignment", 32)) or 32
            data_start = -(-fh.tell() // align) * align
    except OSError as e:
        raise ModelSourceError(f"cannot read the GGUF file {p}: {e}") from None
    except (ValueError, struct.error, OverflowError) as e:
        raise ModelSourceError(f"{p} is not a valid GGUF file: {e}") from None
    end = data_start + max((_nbytes(dims, kind) + off for dims, kind, off in tensors.values()), default=0)
    if end > size:
        raise ModelSourceError(f"{p} is not a valid GGUF file: its tensors need {end:,} bytes but it has {size:,} "
                               "(truncated or damaged: copy or download it again)")  # fmt: skip
    if not tensors:
        raise ModelSourceError(f"{p} is not a valid GGUF file: it holds no tensors")
    return GGUFHeader(version, metadata, tensors, data_start)


def _nbytes(dims: tuple[int, ...], kind: int) -> int:
    """Bytes of one tensor's data (0 when the ggml type is unknown or the gguf package is missing)."""
    sizes = _quant_sizes()
    if kind not in sizes:
        return 0
    block, type_size = sizes[kind]
    count = 1
    for d in dims:
        count *= d
    return count // block * type_size


def _quant_sizes() -> dict[int, tuple[int, int]]:
    if importlib.util.find_spec("gguf") is None:
        return {}
    from gguf import GGML_QUANT_SIZES

    return {int(k): (int(v[0]), int(v[1])) for k, v in GGML_QUANT_SIZES.items()}


# ------------------------------------------------------------------------------------------------------------
# The conversion


def convert_gguf(
    path: str | os.PathLike[str],
    sha256: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    verify: bool = True,
) -> Path:
    """The cached Hugging Face folder of the GGUF at ``path`` (whose sha256 the caller computed), converted if needed.

    Concurrent callers (threads or processes) converting the same content wait for one another; one converts.
    """
    final = cached_folder(sha256, cache_dir)
    if read_conversion_manifest(final, sha256) is not None:
        return final
    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError(f"converting {Path(path).name} needs the gguf package: {GGUF_INSTALL}")
    root = final.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelSourceError(f"cannot create the model cache {root} ({e}): set AGENTTUNING_CACHE to a writable "
                               "folder")  # fmt: skip
    with _locked(root / f".{final.name}.lock") as exclusive:
        if read_conversion_manifest(final, sha256) is not None:  # another process finished it while we waited
            return final
        if exclusive:  # we hold the lock: what is there was left by a killed conversion, or is not ours to trust
            for stale in root.glob(f".tmp-{final.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():
                shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
        try:
            _convert_into(Path(path), sha256, tmp, progress=progress, verify=verify)
            for f in tmp.iterdir():  # mkdtemp makes the folder private and transformers some files; a cache is not
                f.chmod(0o644)
            tmp.chmod(0o755)
            try:
                os.replace(tmp, final)
            except OSError:  # without a lock, another process may have renamed its own copy into place first
                if read_conversion_manifest(final, sha256) is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[bool]:
    """An exclusive ``flock`` on ``lock_path`` (yields True), or nothing where there is no fcntl (yields False)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename into place is still atomic, and a finished folder is never replaced
        yield False
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _convert_into(path: Path, sha256: str, out: Path, *, progress: bool, verify: bool) -> None:
    header = read_header(path)
    size = path.stat().st_size
    if progress:
        print(f"converting {path.name} ({size / 1e6:.0f} MB, {header.architecture}) into a Hugging Face folder, "
              f"once: {out.parent}", file=sys.stderr, flush=True)  # fmt: skip
    start = time.perf_counter()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True
        )
    except Exception as e:  # noqa: BLE001 - one line naming the file; the cause stays chained
        raise ModelSourceError(f"transformers could not load {path} ({header.architecture or 'unknown'} "
                               f"architecture): {type(e).__name__}: {e}") from e  # fmt: skip
    loaded = time.perf_counter() - start
    # the GGUF quantizer marker makes the model refuse save_pretrained and training; its weights are plain fp32
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    check = _verify(model, tok, out) if verify else None
    manifest = {
        "converter": CONVERTER_VERSION,
        "source": str(path.resolve()),
        "file": path.name,
        "sha256": sha256,
        "size": size,
        "architecture": header.architecture,
        "gguf_name": header.metadata.get("general.name"),
        "licence": header.metadata.get("general.license"),
        "dtype": "float32",
        "parameters": sum(p.numel() for p in model.parameters()),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gguf": _version("gguf"),
        "load_seconds": round(loaded, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "verified": check,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(out / "manifest.json", manifest)  # last: its presence marks the folder complete
    if progress:
        print(f"converted {path.name} in {manifest['seconds']:.0f} s", file=sys.stderr, flush=True)


def _verify(model: Any, tok: Any, folder: Path) -> dict[str, Any]:
    """Reload ``folder`` and compare tokenizer ids and probe logits with the in-memory GGUF-loaded model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(str(folder))
    ids = tok(_PROBE, return_tensors="pt").input_ids
    if tok2(_PROBE, return_tensors="pt").input_ids.tolist() != ids.tolist():
        raise ModelSourceError(f"conversion check failed: the saved tokenizer in {folder} encodes differently")
    if getattr(tok2, "chat_template", None) != getattr(tok, "chat_template", None):
        raise ModelSourceError(f"conversion check failed: the saved chat template in {folder} differs")
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        a = model(ids).logits
        b = reloaded(ids).logits
    diff = float((a - b).abs().max())
    if not diff <= _MAX_LOGIT_DIFF:
        raise ModelSourceError(f"conversion check failed: the saved model's logits differ from the GGUF's by {diff}")
    return {"probe_tokens": int(ids.shape[1]), "max_abs_logit_diff": diff}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
