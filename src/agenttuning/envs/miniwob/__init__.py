"""The ``miniwob`` environment: MiniWoB++ web tasks (a held-out task of AgentTuning) in headless Chromium.

Modules: :mod:`.browser` (Chromium under ChromeDriver on a task page; the process-wide pool that bounds browsers),
:mod:`.render` (the DOM as text with element references), :mod:`.actions` (the action grammar), :mod:`.tasks`
(curated tasks, exclusions, the payload), :mod:`.experts` (a rule per curated task), :mod:`.env` (an episode),
:mod:`.definition` (:class:`MiniwobDefinition`). Needs the ``miniwob`` extra and Debian's ``chromium`` and
``chromium-driver``; without them the family lists its tasks and says why it cannot run episodes.

>>> definition().id
'miniwob-v1'
"""

from __future__ import annotations

from functools import cache

from agenttuning.envs.miniwob.definition import MiniwobDefinition

__all__ = ["MiniwobDefinition", "definition"]

definition = cache(MiniwobDefinition)  # one shared instance per process, so its tasks are derived once
