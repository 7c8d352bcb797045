"""The ``os`` environment family: identity, prompts, tasks, expert (AgentTuning section 2.1; AgentBench's OS task)."""

from __future__ import annotations

from agenttuning.envs.base import EnvDefinition
from agenttuning.envs.os import tasks
from agenttuning.envs.os.env import COMMAND_WALL_S, OsEnv
from agenttuning.envs.os.tasks import OsPayload
from agenttuning.schema import Task, Turn

_SYSTEM_PROMPT = """\
You are at a Linux (bash) terminal, logged in as root, and have a task to do on this system: answer a question \
about it, or change it as asked.

Work step by step. In every turn, first think about what to do next, then take exactly one action, in this form:
Thought: <your reasoning>
Action: <one of the three actions below>

1. Run a command: write "bash" and then the command in a ```bash block, like this:
Action: bash
```bash
ls -l /etc
```
The shell keeps its state between your commands (current directory, variables, background jobs). You will see the \
output, cut to its first {chars} characters; a command is stopped after {wall:g} seconds. Commands cannot read \
from the keyboard: pass everything on the command line.

2. Give your answer: write answer(...) with the answer inside the brackets, exactly as the task asks for it, \
like this:
Action: answer(42)
This ends the task.

3. Finish a task that asked you to change the system, once the change is made:
Action: finish
This ends the task; the state of the system is then checked.

Look at the system with commands before you answer; never guess. You have at most {turns} turns."""

_EXAMPLE_TASK = "How many files (not directories) are directly inside /usr/share/example? Answer with the number only."
_EXAMPLE_COMMAND = "find /usr/share/example -maxdepth 1 -type f | wc -l"


class OsDefinition(EnvDefinition[OsPayload]):
    """AgentBench's operating-system task: a root shell in a bubblewrap sandbox, tasks derived from templates."""

    name = "os"
    version = 1
    description = "Answer questions about, and make changes to, a Linux system from a bash shell (sandboxed)."
    max_turns = 8  # AgentBench's OS task: 8 rounds
    env_class = OsEnv

    # --- tasks ---------------------------------------------------------------------------------------------
    def derive_tasks(self) -> dict[str, list[Task]]:
        return tasks.derive_os_tasks()

    # --- prompts -------------------------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        return _SYSTEM_PROMPT.format(chars=800, wall=COMMAND_WALL_S, turns=self.max_turns)

    @property
    def one_shot(self) -> list[Turn]:
        return [
            Turn(role="user", content=_EXAMPLE_TASK),
            Turn(role="assistant", content=(
                "Thought: find with -maxdepth 1 -type f lists the files directly inside the folder; wc -l counts "
                f"them.\nAction: bash\n```bash\n{_EXAMPLE_COMMAND}\n```")),
            Turn(role="user", content="7"),
            Turn(role="assistant", content="Thought: The command counted 7 files.\nAction: answer(7)"),
        ]

    # --- episodes ------------------------------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """The sandbox's requirements (bubblewrap, root, cgroup v1, ...) not met here, if any."""
        from agenttuning.envs.os.sandbox import unavailable_reason

        return unavailable_reason()

    def expert(self, task: Task, history: list[Turn]) -> str:
        """Run the reference solution in one command, then answer (a question) or finish (a change)."""
        payload = self.payload(task)
        if not any(t.role == "assistant" for t in history):
            return ("Thought: I will run the commands that solve this task.\n"
                    f"Action: bash\n```bash\n{payload.solution}\n```")  # fmt: skip
        return f"Thought: The commands have run; I can end the task.\nAction: {tasks.expert_answer(payload)}"

    def wrong_answer(self, task: Task) -> str:
        return f"Thought: I will end the task now.\nAction: {tasks.wrong_answer(self.payload(task))}"

    def adversarial_actions(self, task: Task) -> list[str]:
        """Generic garbage, then commands that try to escape, exhaust or outlive the sandbox."""
        def sh(command: str) -> str:
            return f"bash\n```bash\n{command}\n```"

        return super().adversarial_actions(task) + [
            sh(":(){ :|:& };:"),  # fork bomb
            sh("while true; do :; done"),  # endless loop
            sh("python3 -c \"b = bytearray(1 << 32)\""),  # memory hog
            sh("head -c 2000000000 /dev/zero > big.bin; ls -l big.bin"),  # fill the disk
            sh("yes | head -c 1000000000"),  # 1 GB of output
            sh("cat /etc/shadow; ls /root; ls /work"),  # host files
            sh("echo x > /usr/bin/pwned; echo y > /etc/pwned"),  # write outside the work dir
            sh("python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)\""),  # network
            sh("setsid nohup sleep 1000 >/dev/null 2>&1 & echo started"),  # escape the episode
            sh("cat"),  # reads stdin
            sh("echo unterminated; printf 'no newline at the end'"),
            "bash\n```bash\n" + "echo a; " * 5000 + "\n```",
            "answer(" + "9" * 100_000 + ")",
        ]
