"""Headless Chromium driving MiniWoB++'s task pages, and the process-wide pool that bounds how many run at once.

MiniWoB++ ships its 130 tasks as HTML pages (inside the ``miniwob`` package) whose shared ``core.js`` generates a
problem from ``Math.seedrandom``, grades it into ``WOB_RAW_REWARD_GLOBAL`` (undiscounted, -1..1) and hands out element
references through ``core.getDOMInfo``. The package's Gymnasium environment drives exactly these globals through
Selenium, one browser per task page, with a screenshot every step; here the same page API is driven directly, so one
browser serves any task (it navigates to another page when the next episode needs one) and no screenshot is taken.

A Chromium costs about 0.9 GB, so browsers come from :class:`BrowserPool`: at most ``max_browsers`` exist in the
process (``AGENTTUNING_MINIWOB_BROWSERS``, default 4); an episode takes one at reset and gives it back when the
environment instance is closed; an idle one is kept (preferring the same task page next time, which then costs only a
new seed) until :func:`shutdown` or interpreter exit quits them all. A browser that failed a call is quit, never
reused.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import threading
import time
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

MAX_BROWSERS_ENV = "AGENTTUNING_MINIWOB_BROWSERS"
DEFAULT_MAX_BROWSERS = 4
COMMAND_TIMEOUT_S = 15  # one WebDriver command; a hung page cannot hold a worker longer than this
ACQUIRE_TIMEOUT_S = 300.0  # waiting for a free browser (others' episodes hold them)
CHROME_BINARY = os.environ.get("MINIWOB_CHROME_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MINIWOB_CHROMEDRIVER", "/usr/bin/chromedriver")
# no time limit: MiniWoB ends an episode after 10 s with -1, far less than a language model needs per step
NO_TIME_LIMIT_MS = 10**9

# One call: the DOM (core.getDOMInfo also refreshes the element table that core.elementClick reads), the utterance,
# and for every element the attributes getDOMInfo leaves out but a text agent needs (a <select>'s options, a title).
_SNAPSHOT_JS = """
var dom = core.getDOMInfo();
var extra = {};
for (var ref in core.previousDOMInfo) {
  var e = core.previousDOMInfo[ref], x = {};
  if (e.tagName === 'SELECT') {
    x.options = Array.prototype.map.call(e.options, function (o) { return o.text; });
    x.value = e.options[e.selectedIndex] ? e.options[e.selectedIndex].text : '';
  }
  var names = ['title', 'placeholder', 'aria-label', 'name'];
  for (var i = 0; i < names.length; i++) {
    var v = e.getAttribute && e.getAttribute(names[i]);
    if (v) x[names[i]] = v;
  }
  if (Object.keys(x).length) extra[ref] = x;
}
return {dom: dom, extra: extra, utterance: core.getUtterance(), done: WOB_DONE_GLOBAL,
        raw_reward: WOB_RAW_REWARD_GLOBAL, reason: WOB_REWARD_REASON === null ? null : String(WOB_REWARD_REASON)};
"""
# CSS content/background pictures of the page's elements that have not finished loading; each is also loaded into
# an Image kept on the page, so that the browser's memory cache holds it for every later episode
_PENDING_IMAGES_JS = """
window.__atImages = window.__atImages || {};
var pending = 0;
document.querySelectorAll('#wrap *').forEach(function (e) {
  var s = getComputedStyle(e);
  [s.content, s.backgroundImage].forEach(function (v) {
    var m = /url\\("?([^")]+)"?\\)/.exec(v || '');
    if (!m) return;
    var img = window.__atImages[m[1]];
    if (!img) { img = window.__atImages[m[1]] = new Image(); img.src = m[1]; }
    if (!img.complete) pending++;
  });
});
return pending;
"""
WARM_UP_POLLS = 40  # 2 s at most
_STATE_JS = ("return {done: WOB_DONE_GLOBAL, raw_reward: WOB_RAW_REWARD_GLOBAL, "
             "reason: WOB_REWARD_REASON === null ? null : String(WOB_REWARD_REASON)};")


def html_dir() -> Path:
    """The task pages inside the installed ``miniwob`` package (found without importing it)."""
    spec = importlib_util.find_spec("miniwob")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the miniwob package is not installed (pip install 'agenttuning[miniwob]')")
    return Path(next(iter(spec.submodule_search_locations))) / "html" / "miniwob"


def _major(version_output: str) -> str | None:
    """The major version in ``Chromium 156.0.8078.129 ...`` or ``ChromeDriver 156.0...`` (None if there is none).

    >>> _major("ChromeDriver 156.0.8078.129 (1a2e)")
    '156'
    """
    for word in version_output.split():
        head = word.split(".", 1)[0]
        if "." in word and head.isdigit():
            return head
    return None


def unavailable_reason() -> str | None:
    """Why no browser can run here (a package, Chromium or a matching ChromeDriver missing), or None."""
    for module, package in (("selenium", "selenium"), ("miniwob", "miniwob==1.1.0")):
        if importlib_util.find_spec(module) is None:
            return f"the {module} package is not installed (pip install 'agenttuning[miniwob]', or {package})"
    versions = {}
    for what, path in (("chromium", CHROME_BINARY), ("chromedriver", CHROMEDRIVER)):
        if not (Path(path).is_file() and os.access(path, os.X_OK)) and shutil.which(path) is None:
            return (f"{what} not found at {path} (apt-get install chromium chromium-driver, or set "
                    f"MINIWOB_CHROME_BINARY / MINIWOB_CHROMEDRIVER)")
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            return f"{what} at {path} does not run: {e}"
        versions[what] = _major(out)
    if versions["chromium"] is None or versions["chromium"] != versions["chromedriver"]:
        return (f"chromedriver {versions['chromedriver']} does not match chromium {versions['chromium']}: "
                "install the chromium-driver package of the same version")
    if not (html_dir() / "click-test.html").is_file():
        return f"the miniwob package has no task pages under {html_dir()}"
    return None


class BrowserError(RuntimeError):
    """A browser call failed (the browser is then discarded)."""


class Browser:
    """One headless Chromium under ChromeDriver, on one MiniWoB task page at a time."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROME_BINARY
        for arg in ("headless", "disable-gpu", "no-sandbox", "disable-dev-shm-usage", "disable-extensions",
                    "window-size=800,600", "mute-audio", "no-first-run"):
            options.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        self.driver.command_executor.client_config.timeout = COMMAND_TIMEOUT_S
        self.driver.set_script_timeout(COMMAND_TIMEOUT_S)
        self.page: str | None = None  # the task whose page is loaded
        self.broken = False

    # --- episodes -------------------------------------------------------------------------------------------
    def start(self, task_name: str, seed: int) -> dict[str, Any]:
        """A fresh episode of ``task_name`` from ``seed`` (loading its page if another is loaded); its snapshot."""
        if self.page != task_name:
            self.driver.get((html_dir() / f"{task_name}.html").as_uri())
            self.page = task_name
            self._warm_up()
        else:
            self.driver.execute_script("core.endEpisode(0);")  # stop the running episode, back to the start cover
        # nothing of the last episode stays focused (a page that keeps its elements would show it); then seed and
        # generate: core.startEpisodeReal calls the task's genProblem, which draws from Math.random
        self.driver.execute_script(
            "if (document.activeElement && document.activeElement.blur) document.activeElement.blur(); "
            # a new episode id makes getDOMInfo number every element afresh from 1 (it keeps an element's ref
            # within one id, and an episode that ended by the page's grader does not always advance it)
            "WOB_EPISODE_ID++; "
            f"Math.seedrandom({int(seed)}); core.EPISODE_MAX_TIME = {NO_TIME_LIMIT_MS}; core.startEpisodeReal();")
        return self.snapshot()

    def _warm_up(self) -> None:
        """Play one throwaway episode on a freshly loaded page and wait until the images its elements use have
        loaded: a picture set in CSS (email-inbox's trash icon) is fetched only once an element shows it, and until
        then it has no size, so the first episode's page would lack it."""
        self.driver.execute_script(f"Math.seedrandom(0); core.EPISODE_MAX_TIME = {NO_TIME_LIMIT_MS}; "
                                   "core.startEpisodeReal();")
        for _ in range(WARM_UP_POLLS):
            pending = self.driver.execute_script(_PENDING_IMAGES_JS)
            if not pending:
                break
            time.sleep(0.05)
        self.driver.execute_script("core.endEpisode(0);")

    def snapshot(self) -> dict[str, Any]:
        """The DOM tree, extra attributes, utterance and grading state (and a fresh element table)."""
        return self.driver.execute_script(_SNAPSHOT_JS)

    def state(self) -> dict[str, Any]:
        return self.driver.execute_script(_STATE_JS)

    # --- actions (refs come from the last snapshot) -----------------------------------------------------------
    def click(self, ref: int) -> bool:
        """Click the element (core.elementClick: a DOM click and focus, wherever the element is)."""
        return self.driver.execute_script(f"return core.elementClick({int(ref)});") is True

    def type(self, ref: int, text: str) -> bool:
        """Focus the field, clear it, and type ``text`` as key presses (so the page's key handlers run)."""
        from selenium.webdriver.common.action_chains import ActionChains

        if not self.click(ref):
            return False
        self.driver.execute_script(
            "var e = core.previousDOMInfo[arguments[0]]; if ('value' in e) e.value = '';", int(ref))
        chain = ActionChains(self.driver, duration=0)
        for ch in text:
            chain.w3c_actions.key_action.key_down(ch)
            chain.w3c_actions.key_action.key_up(ch)
        chain.perform()
        return True

    def select(self, ref: int, option: str) -> str | None:
        """Choose the option of a <select> whose text is ``option``; None on success, else why not."""
        return self.driver.execute_script("""
            var e = core.previousDOMInfo[arguments[0]];
            if (!e || e.tagName !== 'SELECT') return 'it is not a list (select element)';
            for (var i = 0; i < e.options.length; i++) {
              if (e.options[i].text.trim() === arguments[1]) {
                e.selectedIndex = i;
                e.dispatchEvent(new Event('input', {bubbles: true}));
                e.dispatchEvent(new Event('change', {bubbles: true}));
                return null;
              }
            }
            return 'it has no such option';""", int(ref), option)

    def give_up(self) -> None:
        """End the episode as MiniWoB's own time-out does: raw reward -1."""
        self.driver.execute_script("core.endEpisode(-1, false, 'gave up');")

    def quit(self) -> None:
        """Quit Chromium and ChromeDriver (best effort; never raises)."""
        try:
            self.driver.quit()
        except Exception:  # a dead driver: kill what is left of its process
            try:
                self.driver.service.process.kill()
            except Exception:
                pass


class BrowserPool:
    """At most ``max_browsers`` live browsers in the process; idle ones are kept for the next episode."""

    def __init__(self, max_browsers: int | None = None):
        if max_browsers is None:
            max_browsers = int(os.environ.get(MAX_BROWSERS_ENV, DEFAULT_MAX_BROWSERS))
        if max_browsers < 1:
            raise ValueError(f"{MAX_BROWSERS_ENV} must be at least 1, got {max_browsers}")
        self.max_browsers = max_browsers
        self._slots = threading.BoundedSemaphore(max_browsers)  # one per live browser, idle or in use
        self._idle: list[Browser] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    @property
    def live(self) -> int:
        """How many browsers exist now (idle or in use)."""
        return self.max_browsers - self._slots._value  # type: ignore[attr-defined]

    def acquire(self, task_name: str, cancel: threading.Event, timeout_s: float = ACQUIRE_TIMEOUT_S) -> Browser:
        """An idle browser (one on ``task_name``'s page if any), or a new one while fewer than the cap exist;
        otherwise wait for one to be given back. ``cancel`` set (an interrupt) or the timeout raises BrowserError."""
        deadline = threading.TIMEOUT_MAX if timeout_s is None else timeout_s
        waited = 0.0
        while True:
            with self._cond:
                if self._idle:
                    same = [b for b in self._idle if b.page == task_name]
                    browser = (same or self._idle)[-1]
                    self._idle.remove(browser)
                    return browser
                if self._slots.acquire(blocking=False):
                    break
                if cancel.is_set():
                    raise BrowserError("interrupted while waiting for a free browser")
                if waited >= deadline:
                    raise BrowserError(f"no browser free within {timeout_s:g} s ({self.max_browsers} in use; "
                                       f"raise {MAX_BROWSERS_ENV})")
                self._cond.wait(0.1)  # woken by release(); polled so that cancel is seen
                waited += 0.1
        try:
            return Browser()
        except Exception as e:
            self._slots.release()
            with self._cond:
                self._cond.notify()
            raise BrowserError(f"could not start chromium: {type(e).__name__}: {str(e)[:300]}") from None

    def release(self, browser: Browser) -> None:
        """Give a browser back: kept idle if healthy, quit if broken."""
        if browser.broken:
            browser.quit()
            self._slots.release()
        else:
            with self._cond:
                self._idle.append(browser)
        with self._cond:
            self._cond.notify()

    def shutdown(self) -> int:
        """Quit every idle browser (those in use are quit when given back broken, or by a later shutdown); how many."""
        with self._cond:
            idle, self._idle = self._idle, []
        for browser in idle:
            browser.quit()
            self._slots.release()
        return len(idle)


_POOL: BrowserPool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> BrowserPool:
    """The process-wide pool (created on first use; its idle browsers are quit at interpreter exit)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = BrowserPool()
            atexit.register(_POOL.shutdown)
        return _POOL


def shutdown() -> int:
    """Quit the process-wide pool's idle browsers now; how many were quit."""
    return _POOL.shutdown() if _POOL is not None else 0
