"""Model sources: hub ids, local folders, ``.gguf`` files and aliases, all resolved to something ``from_pretrained``
loads (see :mod:`.sources`; the GGUF conversion and its cache: :mod:`.gguf`; docs/models.md).

    from agenttuning.models import resolve_model, describe_source
    folder = resolve_model("smollm2-135m-instruct")   # converted once into $AGENTTUNING_CACHE/models
    describe_source("smollm2-135m-instruct")          # {"kind": "alias", "sha256": ..., "resolved": folder, ...}

Importing this package is cheap: torch and transformers load only when a GGUF is converted.
"""

from agenttuning.models.errors import ModelSourceError
from agenttuning.models.gguf import CONVERTER_VERSION, cache_root
from agenttuning.models.sources import (
    ALIASES,
    Alias,
    check_model_source,
    describe_source,
    gguf_sha256,
    locate_alias,
    resolve_model,
    source_fingerprint,
    source_kind,
)

__all__ = [
    "ALIASES",
    "CONVERTER_VERSION",
    "Alias",
    "ModelSourceError",
    "cache_root",
    "check_model_source",
    "describe_source",
    "gguf_sha256",
    "locate_alias",
    "resolve_model",
    "source_fingerprint",
    "source_kind",
]
