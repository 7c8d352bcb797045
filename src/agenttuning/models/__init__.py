"""Model sources: hub ids, local folders, ``.gguf`` files and aliases, all resolved to something ``from_pretrained``
loads (see :mod:`.sources`; the GGUF conversion and its cache: :mod:`.gguf`; docs/models.md).

    from agenttuning.models import resolve_model, describe_source
    folder = resolve_model("smollm2-135m-instruct")   # converted once into $AGENTTUNING_CACHE/models
    describe_source("smollm2-135m-instruct")          # {"kind": "alias", "sha256": ..., "resolved": folder, ...}

Importing this package is cheap: torch and transformers load only when a GGUF is converted.
"""

from agenttuning.models import sources
from agenttuning.models.errors import ModelSourceError
from agenttuning.models.gguf import CONVERTER_VERSION, cache_root
from agenttuning.models.sources import *  # noqa: F403 - the package's API is sources' API plus the three above

__all__ = ["CONVERTER_VERSION", "ModelSourceError", "cache_root"]
__all__ += sources.__all__
