"""``python -m agenttuning.envs.household.spec_build [SPEC_JSON]``: build ``./game.z8`` from a game spec.

The child process :func:`agenttuning.envs.household.games.ensure_game` runs for a self-instructed game (with
``PYTHONHASHSEED=0``, in the game's temporary folder): a spec that crashes or hangs TextWorld's compiler takes only
this process down. A module of its own, which the package does not import, so ``-m`` runs it fresh.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agenttuning.envs.household.spec import SPEC_FILE, WorldSpec, build_game


def main(argv: list[str]) -> int:
    """Build from the spec file (default ``spec.json``) in the current folder: exit 0 when built, 2 with the reason
    on stderr when not."""
    try:
        spec = WorldSpec.model_validate_json(Path(argv[0] if argv else SPEC_FILE).read_text())
        build_game(spec)
    except Exception as e:  # noqa: BLE001 - any failure of a teacher's spec is reported, not raised, to the parent
        print(f"{type(e).__name__}: {str(e)[:600]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
