"""The daskem page of the Dask dashboard: ``/daskem`` on the scheduler's web server.

A job registers :class:`DashboardPage` (a scheduler plugin) and then publishes its progress
as events of the topic :data:`TOPIC` (``client.log_event``: no round trip). The plugin keeps
the latest job's state and serves it as ``/daskem/state.json``; ``/daskem`` is a page that
draws it every second: the objective per iteration of every restart (or candidate), which
restarts run, converged or were dropped, the reads of the data by phase, the seconds per
pass, and the job's messages.
"""

from __future__ import annotations

import json
import time

from distributed.diagnostics.plugin import SchedulerPlugin

ROUTE = "/daskem"
TOPIC = "daskem-progress"
PLUGIN = "daskem-dashboard"
_MESSAGES = 30  # the newest job messages the page lists


def _finite(value):
    """JSON-safe: NaN and infinities as None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


class DashboardPage(SchedulerPlugin):
    """Serves the daskem page and keeps what it shows (on the scheduler)."""

    name = PLUGIN

    def __init__(self) -> None:
        self.state: dict = {}

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        app = getattr(scheduler, "http_application", None)
        if app is None or getattr(app, "_daskem_page", False):
            return  # no web server; or the routes are there (they find this plugin by name)
        from tornado import web

        class Handler(web.RequestHandler):
            def initialize(self, scheduler, body) -> None:
                self.dask_scheduler, self.body = scheduler, body

            def get(self) -> None:
                plugin = self.dask_scheduler.plugins.get(PLUGIN)
                if self.body == "state":
                    self.set_header("Content-Type", "application/json")
                    self.set_header("Cache-Control", "no-store")
                    self.write(json.dumps(_finite(plugin.state if plugin else {})))
                else:
                    self.set_header("Content-Type", "text/html; charset=utf-8")
                    self.write(PAGE)

        app.add_handlers(r".*", [(rf"{ROUTE}/?", Handler, {"scheduler": scheduler,
                                                         "body": "page"}),
                                 (rf"{ROUTE}/state.json", Handler,
                                  {"scheduler": scheduler, "body": "state"})])
        app._daskem_page = True

    def log_event(self, topic: str, msg) -> None:
        if topic == TOPIC and isinstance(msg, dict):
            self.update(msg)

    def update(self, record: dict) -> None:
        """Fold one progress record (as :class:`daskem.progress.Reporter` sends) in."""
        kind = record.get("event")
        if kind == "job":  # a new fit: start over (keeping the messages that led to it)
            messages = (self.state or {}).get("messages", [])
            self.state = {"job": record, "restarts": {}, "passes": {}, "seconds": [],
                          "messages": messages, "iteration": 0, "status": "running",
                          "updated": time.time()}
            return
        state = self.state or {"job": {}, "restarts": {}, "passes": {}, "seconds": [],
                               "messages": [], "iteration": 0, "status": "running"}
        self.state = state
        state["updated"] = time.time()
        if kind == "iteration":
            state["iteration"] = record.get("iteration", state["iteration"])
            state["running"] = record.get("running")
            state["passes"] = record.get("passes_by_phase") or state["passes"]
            elapsed = record.get("elapsed")
            if elapsed is not None:
                last = state.get("elapsed_last")
                if last is not None and elapsed >= last:
                    state["seconds"].append(round(elapsed - last, 4))
                state["elapsed_last"] = elapsed
            for entry in record.get("restarts", []):
                key = str(entry["restart"])
                kept = state["restarts"].setdefault(key, {"objectives": []})
                kept.update({k: entry[k] for k in ("status", "n_iter")})
                kept["objectives"] = entry.get("objectives", kept["objectives"])
        elif kind == "info":
            state["messages"] = (state["messages"] + [record.get("message", "")])[-_MESSAGES:]
            if str(record.get("message", "")).startswith("done:"):
                state["status"] = "done"
        elif kind == "failed":
            state["status"] = "failed"
            state["messages"] = (state["messages"] + [record.get("message", "")])[-_MESSAGES:]


def install(client, reporter) -> str | None:
    """Register the page with the client's scheduler and send it the reporter's events;
    returns the page's URL (``None`` if the scheduler has no dashboard or cannot load the
    plugin, for example a joined cluster whose scheduler has no daskem installed)."""
    try:
        client.register_plugin(DashboardPage())
    except Exception:  # noqa: BLE001 - the page is an extra: the job goes on without it
        return None
    reporter.publish = lambda record: client.log_event(TOPIC, record)
    link = client.dashboard_link
    if not link:
        return None
    return link.rsplit("/", 1)[0] + ROUTE


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>daskem</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1.2em; color: #222; }
 h1 { font-size: 1.3em; margin: 0 0 .2em 0; } h2 { font-size: 1.05em; margin: 1.2em 0 .3em; }
 .muted { color: #666; } table { border-collapse: collapse; }
 td, th { padding: .15em .7em; border-bottom: 1px solid #ddd; text-align: right; }
 th { text-align: left; } .grid { display: flex; flex-wrap: wrap; gap: 2em; }
 svg text { font: 11px system-ui, sans-serif; } .converged { color: #2a7; }
 .dropped { color: #999; } .running { color: #c60; } pre { white-space: pre-wrap; }
</style></head>
<body>
<h1>daskem <span id="status" class="muted"></span></h1>
<div id="summary" class="muted">waiting for a job ...</div>
<h2>Objective per iteration</h2>
<svg id="objective" width="760" height="300" role="img"
     aria-label="objective per iteration of every restart"></svg>
<div class="grid">
 <div><h2>Restarts</h2><table id="restarts"></table></div>
 <div><h2>Reads of the data by phase</h2><table id="passes"></table></div>
 <div><h2>Seconds per pass</h2><svg id="seconds" width="360" height="160"></svg></div>
</div>
<h2>Messages</h2><pre id="messages" class="muted"></pre>
<script>
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const NS = "http://www.w3.org/2000/svg";
function el(svg, name, attrs, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  svg.appendChild(node); return node;
}
function nice(v) { return Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0)
                   ? v.toExponential(3) : (+v.toPrecision(7)).toString(); }
function plotObjective(svg, restarts, label) {
  svg.innerHTML = "";
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const L = 90, R = 150, T = 26, B = 30;
  const series = Object.entries(restarts).filter(([, r]) => r.objectives.length);
  if (!series.length) { el(svg, "text", {x: L, y: H / 2}, "no iteration yet"); return; }
  // The scale follows the restarts still in the fit; dropped ones are drawn but clipped.
  const shown = series.filter(([, r]) => r.status !== "dropped");
  const pool = (shown.length ? shown : series).flatMap(([, r]) => r.objectives.slice(1));
  const all = pool.length ? pool : series.flatMap(([, r]) => r.objectives);
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi === lo) { hi += Math.abs(hi) * 1e-6 + 1e-9; lo -= Math.abs(lo) * 1e-6 + 1e-9; }
  const n = Math.max(...series.map(([, r]) => r.objectives.length));
  const x = i => L + (W - L - R) * (n > 1 ? i / (n - 1) : 0.5);
  const y = v => T + (H - T - B) * (1 - (Math.min(Math.max(v, lo), hi) - lo) / (hi - lo));
  el(svg, "line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#888"});
  el(svg, "line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#888"});
  for (const v of [lo, (lo + hi) / 2, hi])
    el(svg, "text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, nice(v));
  el(svg, "text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle"},
     "iteration (1 to " + n + ")");
  el(svg, "text", {x: L, y: 12}, label);
  Object.entries(restarts).forEach(([key, r], k) => {  // every restart in the legend
    const colour = COLOURS[k % COLOURS.length];
    if (r.objectives.length) {
      const points = r.objectives.map((v, i) => x(i) + "," + y(v)).join(" ");
      el(svg, "polyline", {points, fill: "none", stroke: colour, "stroke-width": 2,
                           "stroke-dasharray": r.status === "dropped" ? "4 3" : ""});
    }
    el(svg, "text", {x: W - R + 8, y: T + 14 + 16 * k, fill: colour},
       (r.label || "restart " + key) + " (" + r.status + ")");
  });
}
function plotSeconds(svg, seconds) {
  svg.innerHTML = "";
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  if (!seconds.length) { el(svg, "text", {x: 10, y: H / 2}, "no pass yet"); return; }
  const top = Math.max(...seconds), bw = (W - 50) / seconds.length;
  seconds.forEach((s, i) => el(svg, "rect", {x: 45 + i * bw, y: H - 20 - (H - 30) * s / top,
    width: Math.max(bw - 1, 1), height: (H - 30) * s / top, fill: "#1f77b4"}));
  el(svg, "text", {x: 40, y: 14, "text-anchor": "end"}, top.toFixed(2) + " s");
  el(svg, "text", {x: 40, y: H - 20, "text-anchor": "end"}, "0");
  el(svg, "text", {x: W / 2, y: H - 4, "text-anchor": "middle"}, "pass");
}
async function refresh() {
  let state;
  const url = location.pathname.replace(/\\/$/, "") + "/state.json";
  try { state = await (await fetch(url, {cache: "no-store"})).json(); }
  catch (e) { return; }
  if (!state.job) return;
  const job = state.job;
  document.getElementById("status").textContent = "— " + state.status;
  document.getElementById("summary").innerHTML =
    "<b>" + (job.estimator || job.kind || "") + "</b><br>run store " + (job.store || "") +
    "<br><span id='iteration' data-iteration='" + state.iteration + "'>iteration " +
    state.iteration + " of " + (job.max_iter || "?") + "</span>, running " +
    (state.running ?? "?") + " of " + Object.keys(state.restarts).length;
  const names = job.candidates || [];
  Object.entries(state.restarts).forEach(([k, r]) => { r.label = names[+k]; });
  plotObjective(document.getElementById("objective"), state.restarts,
                job.objective || "objective");
  document.getElementById("restarts").innerHTML =
    "<tr><th>restart</th><th>status</th><th>iterations</th><th>objective</th></tr>" +
    Object.entries(state.restarts).map(([k, r]) =>
      "<tr><th>" + (r.label || k) + "</th><td class='" + r.status + "'>" + r.status +
      "</td><td>" + r.n_iter + "</td><td>" +
      (r.objectives.length ? nice(r.objectives[r.objectives.length - 1]) : "") +
      "</td></tr>").join("");
  const passes = Object.entries(state.passes || {});
  document.getElementById("passes").innerHTML =
    "<tr><th>phase</th><th>reads</th></tr>" + passes.map(([k, v]) =>
      "<tr><th>" + k + "</th><td>" + v + "</td></tr>").join("") +
    "<tr><th>total</th><td>" + passes.reduce((a, [, v]) => a + v, 0) + "</td></tr>";
  plotSeconds(document.getElementById("seconds"), state.seconds || []);
  document.getElementById("messages").textContent = (state.messages || []).join("\\n");
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
