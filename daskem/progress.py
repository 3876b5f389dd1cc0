"""Progress of a job: one line per pass for people, JSON lines for schedulers."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from daskem.engine.em import EMState
from daskem.model import KINDS


@dataclass
class Reporter:
    """Progress for people (one line per iteration) and for schedulers (JSON lines)."""

    quiet: bool = False
    json_stream: TextIO | None = None
    debug: bool = False  # keep distributed's own logs (workers' task errors among them)
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.monotonic)
    # Where else the events go: the daskem page of the Dask dashboard (daskem.dashboard).
    publish: Callable[[dict], None] | None = None

    def info(self, message: str, **fields) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)
        self.event("info", message=message, **fields)

    def event(self, kind: str, /, _detail: dict | None = None, **fields) -> None:
        """One record: to the JSON-lines stream, and with ``_detail`` (more detail) to the
        dashboard page."""
        if self.json_stream is None and self.publish is None:
            return
        # Strict JSON: NaN and infinities (no change yet, say) become null.
        record = finite({"event": kind, "time": round(time.time(), 3), **fields})
        if self.json_stream is not None:
            self.json_stream.write(json.dumps(record, default=float, allow_nan=False) + "\n")
            self.json_stream.flush()
        if self.publish is not None:
            try:
                self.publish({**record, **finite(_detail or {})})
            except Exception:  # noqa: BLE001 - the page is an extra; the job goes on
                self.publish = None

    def iteration(self, n_pass: int, states: list[EMState], kind: str, max_iter: int,
                  passes: dict | None = None) -> None:
        """One line per pass over the data.

        With several restarts (or candidates) the line follows one of them, the leader:
        the running one with the best objective (once none runs, the best). It shows the
        leader's iteration and objective and the change of its objective in this pass, and
        how many are still running; ``reads``: the full reads of the data so far.
        ``kind``: ``"gmm"``, ``"kmeans"``, or ``"select"`` (candidates' objectives are not
        comparable: no objective is shown).
        """
        leader = _leader(states, kind)
        state = states[leader]
        change = (abs(state.objectives[-1] - state.objectives[-2])
                  if len(state.objectives) > 1 else float("nan"))
        elapsed = time.monotonic() - self.started
        running = sum(s.running and s.n_iter < max_iter for s in states)
        objective, shown = None, ""
        if kind in KINDS and state.objectives:
            objective = state.objectives[-1]
            what = "" if len(states) == 1 else f"restart {leader}: "
            shown = f"{what}{KINDS[kind].objective} {objective:.10g}  "
        reads = int(sum(passes.values())) if passes else None
        if not self.quiet:
            shown_reads = f"  reads {reads:3d}" if reads is not None else ""
            restarts = f"  running {running}/{len(states)}" if len(states) > 1 else ""
            print(f"iter {state.n_iter:4d}/{max_iter}  {shown}change {change:.3e}"
                  f"{restarts}{shown_reads}  {elapsed:7.1f} s", file=self.stream, flush=True)
        restarts = [{"restart": i, "status": _status(s, max_iter), "n_iter": s.n_iter,
                     "objective": s.objectives[-1] if s.objectives else None}
                    for i, s in enumerate(states)]
        detail = [{**r, "objectives": [float(v) for v in s.objectives]}
                  for r, s in zip(restarts, states, strict=True)]
        self.event("iteration", _detail={"restarts": detail}, iteration=state.n_iter,
                   restart=leader, objective=objective, change=change, running=running,
                   passes=reads, passes_by_phase=dict(passes or {}),
                   elapsed=round(elapsed, 3), restarts=restarts)


def _status(state: EMState, max_iter: int) -> str:
    if state.dropped:
        return "dropped"
    if state.converged:
        return "converged"
    return "max_iter" if state.n_iter >= max_iter else "running"


def _leader(states: list[EMState], kind: str) -> int:
    """The restart a progress line follows: the best of those still running; once none
    runs, the best of those not dropped (a restart beaten on the sample is dropped).
    Candidates of a selection: the one that has iterated most."""
    pool = ([i for i, s in enumerate(states) if s.running and s.objectives]
            or [i for i, s in enumerate(states) if not s.dropped and s.objectives]
            or [i for i, s in enumerate(states) if s.objectives] or [0])
    if kind not in KINDS:
        return max(pool, key=lambda i: states[i].n_iter)
    values = [states[i].objectives[-1] if states[i].objectives else np.nan for i in pool]
    return pool[KINDS[kind].best(values)] if not np.isnan(values).all() else pool[0]


def finite(value):
    """``value`` with every NaN or infinite float (nested in dicts and lists) made None."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value
