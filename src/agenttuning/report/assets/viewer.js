// The trajectory viewer: a static page, no server, no external assets.
// The trajectories are JSON in <script type="application/json" id="trajectory-data">. Model output is data:
// every piece of it reaches the page through textContent, never as HTML.
// State lives in the URL hash: #source=..&env=..&outcome=..&traj=I&step=K (K = 1.. or "all").
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("trajectory-data").textContent);
  var TRAJS = DATA.trajectories;
  var body = document.body;
  var state = { source: "", env: "", outcome: "", traj: null, step: 1 };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function outcome(t) { return t.success ? "success" : "failure"; }

  function matches(t) {
    if (state.source && t.source !== state.source) return false;
    if (state.env && t.env !== state.env) return false;
    if (state.outcome === "success" || state.outcome === "failure") return outcome(t) === state.outcome;
    if (state.outcome.indexOf("end:") === 0) return t.end_reason === state.outcome.slice(4);
    return true;
  }

  function unique(key) {
    var seen = [];
    TRAJS.forEach(function (t) { if (seen.indexOf(t[key]) < 0) seen.push(t[key]); });
    return seen;
  }

  function fillSelect(id, options) {
    var select = document.getElementById(id);
    select.replaceChildren();
    options.forEach(function (o) {
      var opt = el("option", null, o[1]);
      opt.value = o[0];
      select.appendChild(opt);
    });
    return select;
  }

  function setupFilters() {
    var sources = [["", "all sources"]].concat(unique("source").map(function (s) { return [s, s]; }));
    var envs = [["", "all environments"]].concat(unique("env").sort().map(function (e) { return [e, e]; }));
    var outcomes = [["", "any outcome"], ["success", "success"], ["failure", "failure"]].concat(
      unique("end_reason").sort().map(function (r) { return ["end:" + r, "ended: " + r]; }));
    [["f-source", sources, "source"], ["f-env", envs, "env"], ["f-outcome", outcomes, "outcome"]].forEach(
      function (f) {
        var select = fillSelect(f[0], f[1]);
        select.addEventListener("change", function () { state[f[2]] = select.value; update(); });
      });
  }

  function syncFilters() {
    document.getElementById("f-source").value = state.source;
    document.getElementById("f-env").value = state.env;
    document.getElementById("f-outcome").value = state.outcome;
  }

  function renderList() {
    var list = document.getElementById("list");
    list.replaceChildren();
    var shown = 0;
    TRAJS.forEach(function (t) {
      if (!matches(t)) return;
      shown += 1;
      var li = el("li", "item " + outcome(t) + (state.traj === t.i ? " selected" : ""));
      li.dataset.traj = String(t.i);
      var button = el("button", "pick");
      button.type = "button";
      var top = el("span", "item-top");
      top.appendChild(el("span", "badge " + outcome(t), t.success ? "✓" : "✗"));
      top.appendChild(el("span", "item-id", t.id));
      button.appendChild(top);
      button.appendChild(el("span", "item-meta", t.source + " · " + t.env + " · reward " + fmt(t.reward) +
        " · " + t.steps.length + " step" + (t.steps.length === 1 ? "" : "s") + " · " + t.end_reason));
      button.addEventListener("click", function () { state.traj = t.i; state.step = 1; update(); });
      li.appendChild(button);
      list.appendChild(li);
    });
    document.getElementById("count").textContent = shown + " of " + TRAJS.length + " listed";
    body.dataset.listed = String(shown);
  }

  function fmt(x) { return (Math.round(x * 1000) / 1000).toString(); }

  function block(label, text, cls) {
    var wrap = el("div", "field " + cls);
    wrap.appendChild(el("div", "label", label));
    wrap.appendChild(el("pre", "text", text));
    return wrap;
  }

  function stepCard(t, k) {
    var s = t.steps[k - 1];
    var card = el("section", "step");
    card.dataset.step = String(k);
    var flags = [];
    if (s.term) flags.push("terminated");
    if (s.trunc) flags.push("truncated");
    card.appendChild(el("h3", null, "Step " + k + " of " + t.steps.length + " · reward " + fmt(s.r) +
      (flags.length ? " · " + flags.join(", ") : "")));
    if (s.pe) {
      card.appendChild(block("Unparsable reply", s.raw !== null ? s.raw : s.t, "error"));
      card.appendChild(el("p", "parse-error", "parse error: " + s.pe));
    } else {
      if (s.t) card.appendChild(block("Thought", s.t, "thought"));
      card.appendChild(block("Action", s.a, "action"));
    }
    card.appendChild(block("Observation", s.o, "observation"));
    return card;
  }

  function renderDetail() {
    var detail = document.getElementById("detail");
    detail.replaceChildren();
    var t = state.traj === null ? null : TRAJS[state.traj];
    body.dataset.selected = t ? String(t.i) : "";
    if (!t) {
      detail.appendChild(el("p", "empty", "Select a trajectory on the left."));
      body.dataset.step = "";
      return;
    }
    var n = t.steps.length;
    if (state.step !== "all") state.step = Math.min(Math.max(1, state.step || 1), Math.max(1, n));
    body.dataset.step = String(state.step);
    var head = el("header", "detail-head " + outcome(t));
    head.appendChild(el("h2", null, t.id));
    head.appendChild(el("p", "meta", t.source + " · " + t.env + " · policy " + (t.policy || "?")));
    head.appendChild(el("p", "outcome", (t.success ? "SUCCESS" : "FAILURE") + " · reward " + fmt(t.reward) +
      " · ended: " + t.end_reason + " · " + n + " steps · " + t.wall_time_s.toFixed(2) + " s" +
      (t.tokens ? " · tokens " + t.tokens[0] + " + " + t.tokens[1] : "")));
    if (t.error) head.appendChild(el("p", "parse-error", "error: " + t.error));
    detail.appendChild(head);
    var ctx = DATA.contexts[t.ctx] || [];
    if (ctx.length) {
      var details = el("details", "context");
      details.appendChild(el("summary", null, "Instructions and in-context example (" + ctx.length + " turns)"));
      ctx.forEach(function (turn) { details.appendChild(block(turn.role, turn.content, "ctx-" + turn.role)); });
      detail.appendChild(details);
    }
    detail.appendChild(block("Task", t.task, "task"));
    var nav = el("nav", "stepper");
    var prev = el("button", "prev", "◀ prev");
    var next = el("button", "next", "next ▶");
    var all = el("button", "all", state.step === "all" ? "one step at a time" : "show all");
    [prev, next, all].forEach(function (b) { b.type = "button"; });
    var pos = el("span", "position", state.step === "all" ? "all " + n + " steps" : "step " + state.step + " / " + n);
    prev.disabled = state.step === "all" || state.step <= 1;
    next.disabled = state.step === "all" || state.step >= n;
    prev.addEventListener("click", function () { go(-1); });
    next.addEventListener("click", function () { go(1); });
    all.addEventListener("click", function () { state.step = state.step === "all" ? 1 : "all"; update(); });
    nav.appendChild(prev);
    nav.appendChild(pos);
    nav.appendChild(next);
    nav.appendChild(all);
    detail.appendChild(nav);
    var steps = el("div", "steps");
    steps.id = "steps";
    if (n === 0) steps.appendChild(el("p", "empty", "No steps."));
    else if (state.step === "all") for (var k = 1; k <= n; k += 1) steps.appendChild(stepCard(t, k));
    else steps.appendChild(stepCard(t, state.step));
    detail.appendChild(steps);
  }

  function go(delta) {
    var t = TRAJS[state.traj];
    if (!t || state.step === "all") return;
    state.step = Math.min(Math.max(1, state.step + delta), t.steps.length);
    update();
  }

  function readHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    state.source = params.get("source") || "";
    state.env = params.get("env") || "";
    state.outcome = params.get("outcome") || "";
    var i = parseInt(params.get("traj"), 10);
    state.traj = i >= 0 && i < TRAJS.length ? i : null;
    var step = params.get("step");
    state.step = step === "all" ? "all" : (parseInt(step, 10) || 1);
  }

  function writeHash() {
    var params = new URLSearchParams();
    ["source", "env", "outcome"].forEach(function (k) { if (state[k]) params.set(k, state[k]); });
    if (state.traj !== null) {
      params.set("traj", String(state.traj));
      params.set("step", String(state.step));
    }
    var hash = params.toString();
    if (history.replaceState) history.replaceState(null, "", hash ? "#" + hash : location.pathname);
  }

  function render() {
    syncFilters();
    renderList();
    renderDetail();
  }

  function update() {
    writeHash();
    render();
  }

  setupFilters();
  readHash();
  if (state.traj === null) {
    var first = TRAJS.filter(matches)[0];
    if (first) state.traj = first.i;
  }
  render();
  window.addEventListener("hashchange", function () { readHash(); render(); });
  document.addEventListener("keydown", function (e) {
    if (e.target && e.target.tagName === "SELECT") return;
    if (e.key === "ArrowLeft") go(-1);
    if (e.key === "ArrowRight") go(1);
  });
  body.dataset.ready = "1";
})();
