"""Hybrid instruction tuning's data mixture (AgentTuning section 2.2).

The paper trains on a mixture of AgentInstruct (agent data, D_agent) and general-domain instructions (D_general):
each training example comes from D_agent with probability ``eta`` and from D_general otherwise, eta = 0.2 in the
released AgentLM models. :class:`MixSampler` draws that mixture as ``(source, index)`` pairs:

- draw ``k`` picks the agent source iff ``u_k < eta``; the uniforms come in blocks of 4096, block ``b`` from
  ``random.Random("mix:<seed>:source:<b>").random()`` (string seeding and ``random()`` are the two things Python
  promises to keep stable across versions, so a seed means the same mixture everywhere);
- within a source, the ``c``-th draw of that source reads position ``c % n`` of a permutation of the source that is
  reshuffled on every pass ``c // n`` over it (the order of ``n`` uniforms from ``"mix:<seed>:<source>:<pass>"``),
  so every example of a source is seen exactly once per pass over it.

The sampler's whole state is ``(seed, step)``: :meth:`MixSampler.at` resumes at any step by recounting the agent
draws before it block by block (about two seconds per ten million steps), and yields exactly what the
uninterrupted sampler would have yielded from that step on.

**What an epoch means under mixing.** One epoch is the number of draws in which the agent data is seen once in
expectation: ``ceil(n_agent / eta)`` draws (for eta = 0.2 and the paper's 1,866 trajectories: 9,330 draws, of which
about 7,464 general). The agent data is the scarce part the mixture is built around, and the general corpus is
far larger than one epoch needs, so an epoch counted on the general data would mean tens of agent passes. With
eta = 0 (general only) one epoch is one pass over the general data. See :func:`epoch_length`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Literal


MixSource = Literal["agent", "general"]
BLOCK = 4096  # draws per block of the source stream


def _uniforms(seed: int, key: str, n: int) -> list[float]:
    """``n`` uniforms in [0, 1) of the stream named ``key``: a function of ``(seed, key)`` only."""
    r = random.Random(f"mix:{seed}:{key}")
    return [r.random() for _ in range(n)]


def epoch_length(n_agent: int, n_general: int, eta: float) -> int:
    """Draws in one epoch: ``ceil(n_agent / eta)``, or ``n_general`` when eta == 0 (see the module doc).

    >>> epoch_length(1866, 100_000, 0.2), epoch_length(1866, 100_000, 1.0), epoch_length(0, 500, 0.0)
    (9330, 1866, 500)
    """
    _check(n_agent, n_general, eta)
    return n_general if eta == 0 else math.ceil(n_agent / eta - 1e-9)


def _check(n_agent: int, n_general: int, eta: float) -> None:
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if n_agent < 0 or n_general < 0:
        raise ValueError("source sizes cannot be negative")
    if eta > 0 and n_agent == 0:
        raise ValueError(f"eta={eta} draws agent examples, but there are none")
    if eta < 1 and n_general == 0:
        raise ValueError(f"eta={eta} draws general examples, but there are none")


class MixSampler:
    """Endless ``(source, index)`` draws of the eta-mixture; deterministic in ``(seed, step)``, resumable.

    >>> s = MixSampler(n_agent=3, n_general=5, eta=0.5, seed=7)
    >>> head = [next(s) for _ in range(6)]
    >>> s.step, list(MixSampler(3, 5, 0.5, seed=7).at(2).take(4)) == head[2:]
    (6, True)
    """

    def __init__(self, n_agent: int, n_general: int, eta: float = 0.2, seed: int = 0, *, start: int = 0):
        _check(n_agent, n_general, eta)
        if start < 0:
            raise ValueError("start must be >= 0")
        self.n = {"agent": n_agent, "general": n_general}
        self.eta, self.seed = eta, seed
        self._perm: dict[MixSource, tuple[int, list[int]]] = {}
        self._seek(start)

    # --- state ------------------------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Draws made so far (the next draw is draw number ``step``)."""
        return self._step

    def state(self) -> dict[str, int]:
        """What a checkpoint needs: ``MixSampler(n_agent, n_general, eta, **state)`` resumes here."""
        return {"seed": self.seed, "start": self._step}

    def at(self, step: int) -> MixSampler:
        """A new sampler with the same data and seed, positioned at ``step``."""
        return MixSampler(self.n["agent"], self.n["general"], self.eta, self.seed, start=step)

    def _flips(self, block: int) -> list[bool]:
        eta = self.eta
        return [u < eta for u in _uniforms(self.seed, f"source:{block}", BLOCK)]

    def _seek(self, step: int) -> None:
        block, offset = divmod(step, BLOCK)
        agent = sum(sum(self._flips(b)) for b in range(block))  # replay: counts only
        self._block, self._bits = block, self._flips(block)
        agent += sum(self._bits[:offset])
        self._step = step
        self._count: dict[MixSource, int] = {"agent": agent, "general": step - agent}

    # --- drawing ----------------------------------------------------------------------------------------------
    def _index(self, source: MixSource, c: int) -> int:
        n = self.n[source]
        p, pos = divmod(c, n)
        cached = self._perm.get(source)
        if cached is None or cached[0] != p:
            keys = _uniforms(self.seed, f"{source}:{p}", n)
            cached = (p, sorted(range(n), key=keys.__getitem__))
            self._perm[source] = cached
        return cached[1][pos]

    def __iter__(self) -> Iterator[tuple[MixSource, int]]:
        return self

    def __next__(self) -> tuple[MixSource, int]:
        block, offset = divmod(self._step, BLOCK)
        if block != self._block:
            self._block, self._bits = block, self._flips(block)
        source: MixSource = "agent" if self._bits[offset] else "general"
        c = self._count[source]
        self._count[source] = c + 1
        self._step += 1
        return source, self._index(source, c)

    def take(self, n: int) -> list[tuple[MixSource, int]]:
        """The next ``n`` draws."""
        return [next(self) for _ in range(n)]

