"""The ``alfworld`` environment: ALFWorld's own household text games, from a data folder the user downloaded.

Modules: :mod:`.data` (the data folder's layout, the payload, the scan into tasks), :mod:`.engine` (ALFWorld's
engine: TextWorld's PDDL environment and Fast Downward, behind one lock), :mod:`.env` (an episode),
:mod:`.definition` (:class:`AlfworldDefinition`: tasks, prompt, expert; :func:`import_alfworld` for ``agenttuning
tasks import alfworld``). Needs the ``alfworld`` extra and ``$AGENTTUNING_ALFWORLD_DATA``; without them the family
lists no tasks and says what is missing. Nothing heavy is imported here: the engine loads on the first episode.

>>> definition().id
'alfworld-v1'
"""

from __future__ import annotations

from functools import cache

from agenttuning.envs.alfworld.definition import AlfworldDefinition, import_alfworld

__all__ = ["AlfworldDefinition", "definition", "import_alfworld"]

definition = cache(AlfworldDefinition)  # one shared instance per process, so its tasks are scanned once
