"""Hand-built trajectories of any shape, for the data tests."""

from __future__ import annotations

from agenttuning.schema import Step, Task, Trajectory, Turn

CONTEXT = [
    Turn(role="user", content="You answer questions. Reply 'Thought: ...' then 'Action: ...'."),
    Turn(role="assistant", content="Ok.", loss=False),
]


def make_traj(
    tid: str = "t-0",
    env: str = "db-v1",
    *,
    reward: float = 1.0,
    success: bool | None = None,
    n_steps: int = 2,
    end_reason: str = "done",
    parse_error_at: int | None = None,
    instruction: str | None = None,
    obs_text: str = "ok",
) -> Trajectory:
    """A finished trajectory with ``n_steps`` ReAct steps (the last one terminating)."""
    instruction = instruction or f"Question {tid}?"
    steps = []
    for i in range(n_steps):
        if i == parse_error_at:
            steps.append(Step(thought="no action here", action="", observation="Invalid action", raw="no action here",
                              parse_error="no 'Action:' found in the reply"))
        else:
            last = i == n_steps - 1
            steps.append(Step(thought=f"step {i}", action=f"act {i}", observation=obs_text, terminated=last))
    return Trajectory(
        task=Task(id=tid, env=env, split="train", instruction=instruction),
        policy="test",
        context=CONTEXT,
        initial_observation=instruction,
        steps=steps,
        reward=reward,
        success=reward >= 1.0 if success is None else success,
        end_reason=end_reason,  # type: ignore[arg-type]
    )
