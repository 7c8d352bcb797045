"""Where an imported AgentBench family's tasks come from, one rule for every such family: the task file given to the
definition, else the file named by the family's environment variable, else its built-in sample."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from agenttuning.schema import Task


def imported_tasks(tasks_file: str | os.PathLike[str] | None, env_var: str, env_id: str,
                   sample: Callable[[], Mapping[str, list[Task]]]) -> dict[str, list[Task]]:  # fmt: skip
    """The tasks by split: ``tasks_file``, else ``$env_var``, else ``sample()``. A task of another environment in
    the file is an error naming the file (an import for one family given to another)."""
    from agenttuning.jsonl import read_records

    path = tasks_file or os.environ.get(env_var) or None
    if path is None:
        return dict(sample())
    tasks = read_records(path, Task)
    foreign = [t.id for t in tasks if t.env != env_id]
    if foreign:
        raise ValueError(f"{path}: tasks {foreign[:3]} belong to another environment than {env_id}")
    return {s: [t for t in tasks if t.split == s] for s in ("train", "test")}
