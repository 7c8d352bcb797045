"""Headless Chromium for the report's browser tests: find the binary, run it with a fresh profile and a timeout.

Flags: exactly ``--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
--no-first-run --user-data-dir=<fresh temporary directory>``, plus what the caller adds (``--screenshot=...``,
``--dump-dom``...). Chromium prints harmless warnings (D-Bus, GPU) to stderr; they are kept for error messages only.
A run past its timeout is killed (its whole process group, which this helper started) and fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run")  # fmt: skip
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TIMEOUT_S = 60


def find_chromium() -> str | None:
    """A Chromium binary on PATH, or Debian's /usr/bin/chromium; None when there is none."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def run_chromium(url: str, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run Chromium once on ``url`` with a fresh profile; AssertionError on timeout (after killing it)."""
    binary = find_chromium()
    assert binary is not None, "no chromium binary"
    with tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True) as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args, url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the process started just above
            out, err = proc.communicate()
            raise AssertionError(f"chromium ran past {timeout} s on {url}; stderr tail:\n{err[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def screenshot(page: Path, png: Path, *, size: str = "1280,1600", url_suffix: str = "") -> Path:
    """A screenshot of a local page (Chromium takes it once the page has loaded)."""
    r = run_chromium(page.resolve().as_uri() + url_suffix, f"--screenshot={png}", f"--window-size={size}")
    assert png.is_file(), f"no screenshot written (exit {r.returncode}); stderr tail:\n{r.stderr[-2000:]}"
    return png


def dump_dom(page: Path, *, url_suffix: str = "", budget_ms: int = 5000) -> str:
    """The DOM after the page's scripts ran (``--dump-dom`` with a virtual-time budget)."""
    r = run_chromium(page.resolve().as_uri() + url_suffix, "--dump-dom", f"--virtual-time-budget={budget_ms}")
    assert r.returncode == 0 and "<body" in r.stdout, f"exit {r.returncode}; stderr tail:\n{r.stderr[-2000:]}"
    return r.stdout


def body_attributes(dom: str) -> dict[str, str]:
    """The attributes of the dumped DOM's ``<body>`` (where the pages record what they rendered)."""
    m = re.search(r"<body([^>]*)>", dom)
    assert m is not None, "no <body> in the dumped DOM"
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))
