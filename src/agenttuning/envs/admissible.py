"""Text games whose agent chooses among the game's admissible commands (``household`` on TextWorld, ``alfworld``):
how an action is compared with those commands, and how the list is shown after each observation."""

from __future__ import annotations

__all__ = ["commands_text", "normalise_command"]


def normalise_command(action: str) -> str:
    """The command as compared with the admissible ones: first line, lower case, single spaces, no final period.

    >>> normalise_command("  Take   Knife from TABLE.\\nThought: more")
    'take knife from table'
    """
    first = action.split("\n", 1)[0]
    return " ".join(first.lower().split()).rstrip(".")


def commands_text(commands: list[str], max_chars: int) -> str:
    """The admissible commands line shown after each observation, at most ``max_chars`` characters.

    >>> commands_text(["look", "go north"], 100)
    'AVAILABLE COMMANDS: look, go north'
    >>> commands_text(["look", "go north"], 24)
    'AVAILABLE COMMANDS: ...'
    """
    text = "AVAILABLE COMMANDS: " + ", ".join(commands)
    return text if len(text) <= max_chars else text[: max_chars - 4] + " ..."
