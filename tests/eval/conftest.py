"""A registry holding ``db`` plus two toy families for the test, restored afterwards."""

from __future__ import annotations

import pytest

from agenttuning.envs import base
from tests.toy_env import LookupDefinition


class HeldOutLookup(LookupDefinition):
    """The toy environment under another name, declared held-out whatever the training data holds."""

    name = "lookup_ho"
    held_out = True

    def tasks(self, split):  # type: ignore[no-untyped-def]
        return [t.model_copy(update={"id": t.id.replace("lookup", "lookup_ho"), "env": self.id})
                for t in super().tasks(split)]  # fmt: skip


@pytest.fixture
def registry(monkeypatch):
    """db (built in) + lookup (a second family) + lookup_ho (held_out=True), in a registry copy."""
    base.available()  # load the built-in and entry-point environments into the real registry first
    monkeypatch.setattr(base, "_REGISTRY", {"db": base._REGISTRY["db"]})  # only db of the built-ins
    lookup = base.register(LookupDefinition(n_test=5))
    held_out = base.register(HeldOutLookup(n_test=3))
    return {"db": base.get("db"), "lookup": lookup, "lookup_ho": held_out}
