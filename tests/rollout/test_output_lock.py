"""Two writers, one file: a second rollout (or pipeline) on an output in use fails clearly; nothing is duplicated.

Real processes race through the real command line; the lock is the kernel's (flock), so a killed holder leaves none.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agenttuning.jsonl import AppendWriter, read_records, repair_tail
from agenttuning.schema import Trajectory

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agenttuning.cli", *args]


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long messages at the console width


def test_a_second_rollout_on_the_same_output_fails_clearly_with_or_without_resume(tmp_path):
    out = tmp_path / "db.jsonl"
    run = ["rollout", "--env", "db", "--policy", "expert", "--split", "train", "--out", str(out), "--no-progress"]
    first = subprocess.Popen(cli(*run, "--concurrency", "1"), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 1):
            time.sleep(0.02)
        assert first.poll() is None, "the first rollout ended before the race"
        seconds = [subprocess.Popen(cli(*run, *extra), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for extra in ([], ["--resume"])]  # fmt: skip
        results = [p.communicate(timeout=60) for p in seconds]
        assert first.poll() is None, "the first rollout must still be running while the others are refused"
    finally:
        first.send_signal(signal.SIGKILL)  # also shows that a killed holder leaves no stale lock (below)
        first.wait()
    for p, (stdout, stderr) in zip(seconds, results):
        assert p.returncode == 2, stderr
        assert f"error: {out} is in use: another process is writing it" in one_line(stderr)
        assert "Traceback" not in stderr
    repair_tail(out)
    ids = [t.task.id for t in read_records(out, Trajectory)]
    assert ids and len(ids) == len(set(ids))
    with AppendWriter(out):  # the kernel dropped the killed holder's lock
        pass


HOLD = """
import sys, time
from pathlib import Path
from agenttuning.pipeline.run import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_pipeline_on_the_same_run_folder_fails_clearly(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ})  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        p = subprocess.run(cli("pipeline", "scratch", f"out={out}", "--no-progress"), cwd=ROOT, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode == 2, p.stderr
    assert f"error: {out} is in use: another process is writing this pipeline run folder" in one_line(p.stderr)
    assert "Traceback" not in p.stderr and not (out / "stages").exists()
