"""ScienceWorld's simulator: a Scala program in a JVM that Python drives over py4j, and a pool of such JVMs.

ScienceWorld's own wrapper (``scienceworld.ScienceWorldEnv``) starts a JVM with the default heap (1 to 2 GB here) and
asks the simulator for every valid action after every step (25 to 257 ms a step, against 1 to 8 ms for the step
itself). This module starts the same jar itself, with a bounded heap (``-Xmx``), and exposes only the calls an
episode needs (:class:`Simulator`). One JVM runs one episode at a time (the simulator holds one game), so the rollout
engine's threads each hold their own JVM; py4j calls block on a socket without holding the GIL, so episodes on
different JVMs run in parallel. Starting a JVM costs about a second, so finished JVMs go back to a process-wide pool
(:func:`acquire` / :func:`release`) of at most ``AGENTTUNING_SCIWORLD_JVMS`` (default 4) JVMs; an episode that needs
one while all are busy waits, and can be interrupted while it waits. :meth:`Simulator.kill` ends a JVM at once from
any thread: how :meth:`SciworldEnv.interrupt` makes a running step return (its py4j call fails), after which that JVM
is never reused.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import threading
from typing import Any

HEAP = os.environ.get("AGENTTUNING_SCIWORLD_HEAP", "512m")  # -Xmx; the simulator's worlds are small
MAX_JVMS = max(1, int(os.environ.get("AGENTTUNING_SCIWORLD_JVMS", "4")))
_JAVA_MIN = 11  # the jar's classes are Java 11 bytecode or older; 17 is what this project tests with


class SimulatorGone(RuntimeError):
    """The JVM died or was killed (by :meth:`Simulator.kill`) under a call."""


def unavailable_reason() -> str | None:
    """Why ScienceWorld cannot run here: scienceworld (the ``sciworld`` extra) not installed, no ``java`` on PATH,
    or a Java older than 11. None when it can."""
    try:
        import py4j  # noqa: F401
        import scienceworld  # noqa: F401
    except ImportError as e:
        return f"scienceworld is not installed ({e.name} missing): pip install 'agenttuning[sciworld]'"
    java = shutil.which("java")
    if java is None:
        return "no 'java' on PATH: ScienceWorld's simulator needs a Java runtime (11 or newer; 17 tested)"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"'{java} -version' failed: {e}"
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if m is None:
        return f"could not read the Java version from '{java} -version': {(out.stderr or out.stdout)[:200]!r}"
    major = int(m[1]) if m[1] != "1" else int(m[2] or 0)  # "1.8.0" is Java 8
    if major < _JAVA_MIN:
        return f"Java {major} at {java} is too old: ScienceWorld's simulator needs Java {_JAVA_MIN} or newer"
    return None


class Simulator:
    """One ScienceWorld JVM and its py4j gateway. Used by one thread at a time; :meth:`kill` from any thread."""

    def __init__(self, heap: str = HEAP):
        from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
        from scienceworld.constants import BASEPATH, JAR_PATH

        # die_on_exit: the JVM ends with this Python process, however it ends; the jar reads its data from BASEPATH
        port, proc = launch_gateway(classpath=JAR_PATH, die_on_exit=True, cwd=BASEPATH, return_proc=True,
                                    javaopts=[f"-Xmx{heap}", "-Xss8m"])
        self.process: subprocess.Popen = proc
        self._gateway = JavaGateway(gateway_parameters=GatewayParameters(auto_field=True, port=port),
                                    java_process=proc)
        self.server: Any = self._gateway.jvm.scienceworld.runtime.pythonapi.PythonInterface()
        self.loaded: tuple[str, int] | None = None  # the game loaded last (task name, variation)
        self.dead = False

    # --- the calls an episode needs (each raises SimulatorGone if the JVM is gone) ------------------------------
    def _call(self, fn: str, *args: Any) -> Any:
        if self.dead:
            raise SimulatorGone("the ScienceWorld JVM was stopped")
        try:
            return getattr(self.server, fn)(*args)
        except Exception as e:  # py4j's network errors, or a Java exception from a JVM being killed
            if self.dead or self.process.poll() is not None:
                self.dead = True
                raise SimulatorGone("the ScienceWorld JVM was stopped") from None
            raise

    def load(self, task_name: str, variation: int, gold: bool = False) -> None:
        """Load a game (no simplifications), optionally with its gold action sequence."""
        self._call("load", task_name, variation, "", gold)
        self.loaded = (task_name, variation)

    def reset(self) -> str:
        """Back to the game's first state; the first observation (the room, as "look around" shows it)."""
        self._call("reset")
        return str(self._call("step", "look around"))

    def step(self, command: str) -> tuple[str, int, bool]:
        """One command: the observation, the score (-100 to 100; negative: the task failed) and whether the task
        is completed. No valid-action enumeration (what makes ``ScienceWorldEnv.step`` slow)."""
        observation = str(self._call("step", command))
        return observation, int(round(100 * float(self._call("getScore")))), bool(self._call("getCompleted"))

    def task_description(self) -> str:
        return str(self._call("getTaskDescription"))

    def gold(self) -> list[str]:
        return [str(a) for a in self._call("getGoldActionSequence")]

    def variations(self, split: str) -> list[int]:
        """ScienceWorld's own variation list of the loaded task for ``train``, ``dev`` or ``test``."""
        fn = {"train": "getVariationsTrain", "dev": "getVariationsDev", "test": "getVariationsTest"}[split]
        return [int(v) for v in self._call(fn)]

    def task_names(self) -> list[str]:
        return [str(n) for n in self._call("getTaskNames")]

    def action_templates(self) -> list[str]:
        return [str(a) for a in self._call("getPossibleActions")]

    # --- lifetime ---------------------------------------------------------------------------------------------
    def kill(self) -> None:
        """End the JVM now (from any thread): a call running on it fails with :class:`SimulatorGone`."""
        self.dead = True
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            self._gateway.close()  # the Python side's sockets
        except Exception:  # noqa: BLE001 - closing a gateway whose JVM is gone can fail in many ways; it is gone
            pass

    @property
    def alive(self) -> bool:
        return not self.dead and self.process.poll() is None


# ------------------------------------------------------------------------------------------------------------
# The process-wide pool

_lock = threading.Condition()
_idle: list[Simulator] = []
_count = 0  # JVMs alive that belong to the pool: idle or held


class Interrupted(RuntimeError):
    """Waiting for a free JVM was interrupted."""


def acquire(stop: threading.Event | None = None) -> Simulator:
    """A JVM for one episode: an idle one, a new one while fewer than ``MAX_JVMS`` exist, else wait for one to be
    released (``stop`` set: give up waiting with :class:`Interrupted`)."""
    global _count
    with _lock:
        while True:
            while _idle:
                sim = _idle.pop()
                if sim.alive:
                    return sim
                _count -= 1
            if _count < MAX_JVMS:
                _count += 1
                break
            if stop is not None and stop.is_set():
                raise Interrupted("interrupted while waiting for a ScienceWorld JVM")
            _lock.wait(timeout=0.2)  # wakes on release(); the timeout lets a set `stop` be seen
    try:
        return Simulator()
    except BaseException:
        with _lock:
            _count -= 1
            _lock.notify()
        raise


def release(sim: Simulator) -> None:
    """Give a JVM back: reused if it is alive, forgotten (and its slot freed) if it was killed."""
    global _count
    with _lock:
        if sim.alive:
            _idle.append(sim)
        else:
            _count -= 1
        _lock.notify()


def shutdown() -> None:
    """Kill every idle JVM (at exit, and for tests that count JVMs); held ones are their holders' to release."""
    global _count
    with _lock:
        idle, _idle[:] = list(_idle), []
        _count -= len(idle)
    for sim in idle:
        sim.kill()


def pool_size() -> tuple[int, int]:
    """(JVMs alive in the pool, of which idle)."""
    with _lock:
        return _count, len(_idle)


atexit.register(shutdown)
