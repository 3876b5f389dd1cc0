"""``daskem report``: a self-contained HTML page about one run store, with its figures.

The page embeds its PNGs (``data:`` URIs), so it can be mailed or archived as one file;
the PNGs are also written beside it. Figures:

* the objective per iteration of every restart (or every candidate of a selection);
* the component weights (k-means: the share of sampled rows in each cluster);
* a 2-D projection (the sample's two principal axes) of a sample of the data, coloured by
  cluster, with each component's 2-standard-deviation covariance ellipse;
* the per-cluster feature means as a heat map;
* for a selection run, BIC and AIC against the number of components, one line per
  covariance type, the chosen candidate marked.

The data sample is read from the run's own data source (a few chunks spread over it);
if that source cannot be read any more, the page says so and shows the model alone.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import numpy as np

from daskem.kernels.covariance import covariance
from daskem.model import ModelKind, ModelRecord, read_model, read_selection
from daskem.store import RunStore, format_passes, no_run_store

FIGURE_DPI = 110


@dataclass
class Figure:
    name: str  # file name without extension
    title: str
    caption: str
    png: bytes


@dataclass
class RunSummary:
    """What the report shows, read from the run store."""

    path: str
    attrs: dict
    record: ModelRecord
    objectives: list[tuple[str, list[float], bool]]  # (label, values, chosen)
    selection: dict | None
    estimator: object  # the fitted KMeans or GaussianMixture
    seconds: list[float] = field(default_factory=list)  # initialisation, then each pass
    sample: np.ndarray | None = None
    sample_note: str = ""

    @property
    def kind(self) -> ModelKind:
        return self.record.kind


def default_output(store_path: str) -> str:
    """``runs/gmm.zarr`` → ``runs/gmm-report``, on the run store's filesystem
    (``s3://bucket/runs/gmm.zarr`` → ``s3://bucket/runs/gmm-report``)."""
    path = store_path.rstrip("/")
    head, _, name = path.rpartition("/")
    stem = name[: -len(".zarr")] if name.endswith(".zarr") else name
    return f"{head}/{stem}-report" if head or path.startswith("/") else f"{stem}-report"


# ------------------------------------------------------------------------ reading


def read_run(store_path: str, sample_rows: int = 4000, seed: int = 0, *,
             storage_options: dict | None = None) -> RunSummary:
    store = RunStore(store_path, storage_options)
    if not store.exists():
        raise no_run_store(store_path)
    record = read_model(store)
    selection = read_selection(store)
    objectives = []
    if selection is not None:
        for i, (_, cand) in enumerate(selection["candidates"]):
            label = f"K={cand['n_components']} {cand['covariance_type']}"
            objectives.append((label, list(cand["objectives"]), i == selection["chosen"]))
    else:
        states = store.load() or []
        values = [s.objectives[-1] if s.objectives else np.nan for s in states]
        best = record.kind.best(values) if np.isfinite(values).any() else -1
        for i, s in enumerate(states):
            objectives.append((f"restart {i}", list(s.objectives), i == best))
    seconds = [float(v) for v in record.history.get("seconds", [])]
    summary = RunSummary(store_path, store.attrs, record, objectives, selection,
                         record.estimator(), seconds)
    summary.sample, summary.sample_note = _read_sample(summary, sample_rows, seed)
    return summary


def _read_sample(run: RunSummary, n_rows: int, seed: int) -> tuple[np.ndarray | None, str]:
    """Rows from up to 8 chunks spread over the run's data source, in model space."""
    import dask

    from daskem.config import parse_config
    from daskem.io.source import open_source

    try:
        config = parse_config(run.attrs["config"], f"{run.path} (stored config)")
        source = open_source(config.data.model_copy(update={"missing": "error",
                                                            "standardize": False}),
                             standardize=run.record.standardize)
        full = source.full
        picks = np.unique(np.linspace(0, full.numblocks[0] - 1, 8).round().astype(int))
        with dask.config.set(scheduler="threads"):
            x = np.concatenate(dask.compute(*[full.blocks[int(i)] for i in picks]))
    except Exception as exc:  # noqa: BLE001 - the report still shows the model
        return None, f"the data could not be read ({type(exc).__name__}: {exc})"
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) > n_rows:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), n_rows, replace=False))]
    return x, (f"{len(x):,} rows sampled from {len(picks)} of the {full.numblocks[0]} chunks "
               f"of {config.data.path}")


# ------------------------------------------------------------------------ figures


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _covariances(estimator) -> np.ndarray | None:
    """Every component's d × d covariance (``None`` for k-means)."""
    if not hasattr(estimator, "covariances_"):
        return None
    return covariance(estimator.covariance_type).dense(
        estimator.covariances_, estimator.n_components, estimator.means_.shape[1])


def _centers(estimator) -> np.ndarray:
    return estimator.means_ if hasattr(estimator, "means_") else estimator.cluster_centers_


def objective_figure(run: RunSummary) -> Figure:
    name = run.kind.objective
    others = "candidate" if run.selection is not None else "restart"
    return Figure("objective", f"{name.capitalize()} per iteration",
                  f"Every {others}, the chosen one in black; the vertical axis spans the chosen "
                  f"one (from its second iteration), so lines of {others}s that ended far "
                  "from it leave the plot. The legend gives each final value.",
                  _png(draw_objective(run)))


def draw_objective(run: RunSummary):
    """The objective per iteration of every restart or candidate, with a legend entry each;
    the vertical scale follows the chosen one."""
    import matplotlib.pyplot as plt

    lines = [(label, np.asarray(v, dtype=np.float64), chosen)
             for label, v, chosen in run.objectives if len(v)]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, (label, values, chosen) in enumerate(lines):
        its = np.arange(1, len(values) + 1)
        text = f"{label}{' (chosen)' if chosen else ''}: {values[-1]:.6g}"
        if chosen:
            ax.plot(its, values, color="black", lw=2.4, marker="o", ms=3, label=text,
                    zorder=3)
        else:
            ax.plot(its, values, color=plt.cm.tab10(i % 10), lw=1.1, alpha=0.85, label=text)
    name = run.kind.objective
    ax.set_xlabel("iteration")
    ax.set_ylabel(name + (" (mean log-likelihood)" if run.kind.maximize else ""))
    best = next((values for _, values, chosen in lines if chosen), None)
    if best is not None:
        # The scale follows the chosen line (after its first iteration, which can sit far
        # off): restarts that ended far worse would flatten it into a straight line.
        shown = best[1:] if len(best) > 2 else best
        lo, hi = float(shown.min()), float(shown.max())
        pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 1e-6, 1e-9)
        ax.set_ylim(lo - pad, hi + pad)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
              ncol=1 + len(lines) // 16, title=f"final {name}", title_fontsize=7)
    return fig


def weights_figure(run: RunSummary, estimator, labels) -> Figure:
    import matplotlib.pyplot as plt

    if hasattr(estimator, "weights_"):
        weights, what = estimator.weights_, "component weight"
    else:
        k = len(estimator.cluster_centers_)
        counts = np.bincount(labels, minlength=k) if labels is not None else np.zeros(k)
        weights, what = counts / max(counts.sum(), 1), "share of sampled rows"
    fig, ax = plt.subplots(figsize=(7, 3.0))
    ks = np.arange(len(weights))
    ax.bar(ks, weights, color=[plt.cm.tab10(k % 10) for k in ks])
    ax.set_xticks(ks)
    ax.set_xlabel("component")
    ax.set_ylabel(what)
    ax.grid(axis="y", alpha=0.3)
    return Figure("weights", "Component weights", f"The {what} of each component.", _png(fig))


def projection_figure(run: RunSummary, estimator, labels) -> Figure:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    centers = _centers(estimator)
    base = run.sample if run.sample is not None else centers
    mean = base.mean(axis=0)
    d = base.shape[1]
    if d >= 2 and len(base) > 1:
        _, _, vt = np.linalg.svd(base - mean, full_matrices=False)
        axes = vt[:2]
    else:
        axes = np.eye(d)[: min(d, 2)]
    if len(axes) < 2:  # one feature: plot it against zero
        axes = np.vstack([axes, np.zeros(d)])
    fig, ax = plt.subplots(figsize=(7, 6))
    if run.sample is not None:
        xy = (run.sample - mean) @ axes.T
        ax.scatter(xy[:, 0], xy[:, 1], c=[plt.cm.tab10(k % 10) for k in labels], s=4,
                   alpha=0.35, linewidths=0)
    dense = _covariances(estimator)
    for k, c in enumerate(centers):
        cxy = (c - mean) @ axes.T
        ax.plot(cxy[0], cxy[1], marker="X", ms=10, color=plt.cm.tab10(k % 10),
                markeredgecolor="black")
        if dense is not None:
            c2 = axes @ dense[k] @ axes.T
            vals, vecs = np.linalg.eigh(c2)
            vals = np.clip(vals, 0, None)
            angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
            ax.add_patch(Ellipse(cxy, 2 * 2 * np.sqrt(vals[-1]), 2 * 2 * np.sqrt(vals[0]),
                                 angle=angle, fill=False, lw=1.8,
                                 edgecolor=plt.cm.tab10(k % 10)))
    ax.set_xlabel("first principal axis of the sample")
    ax.set_ylabel("second principal axis")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    if hasattr(estimator, "covariances_"):
        caption = ("A sample of the data coloured by the most probable component; crosses "
                   "are the means, ellipses two standard deviations of each component's "
                   "covariance. ")
    else:
        caption = ("A sample of the data coloured by its nearest center; crosses are the "
                   "centers. ")
    caption += run.sample_note or ""
    return Figure("projection", "The clusters in two dimensions", caption, _png(fig))


def _features(run: RunSummary, d: int) -> list[str]:
    return list(run.record.attrs.get("features") or [f"feature_{j}" for j in range(d)])


def means_figure(run: RunSummary, estimator) -> Figure:
    space = " of the standardised features" if run.record.standardize is not None else ""
    return Figure("means", "Feature means per component",
                  f"A component's mean of a feature{space} as a standard score among the "
                  "components' means of that feature (its mean over components subtracted, "
                  "divided by their standard deviation): colour and number show the same value. "
                  "The means themselves are in the table below.",
                  _png(draw_means(run, estimator)))


def draw_means(run: RunSummary, estimator):
    """The heat map of the components' feature means as standard scores, each cell
    printing the score its colour shows."""
    import matplotlib.pyplot as plt

    centers = _centers(estimator)
    k, d = centers.shape
    spread = centers.std(axis=0)
    z = (centers - centers.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    fig, ax = plt.subplots(figsize=(min(1.6 + 0.7 * d, 16), min(1.2 + 0.45 * k, 14)))
    image = ax.imshow(z, cmap="RdBu_r", aspect="auto", vmin=-2.5, vmax=2.5)
    ax.set_xticks(range(d))
    ax.set_xticklabels(_features(run, d), rotation=45, ha="right")
    ax.set_yticks(range(k))
    ax.set_yticklabels([f"component {i}" for i in range(k)])
    if k * d <= 400:
        for i in range(k):
            for j in range(d):
                ax.text(j, i, f"{z[i, j]:+.1f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(z[i, j]) > 1.6 else "black")
    fig.colorbar(image, ax=ax, label="standard score among the components")
    return fig


def selection_figure(run: RunSummary) -> Figure:
    import matplotlib.pyplot as plt

    table = run.selection["table"]
    chosen = table[run.selection["chosen"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for ax, criterion in zip(axes, ("bic", "aic"), strict=True):
        for i, ctype in enumerate(dict.fromkeys(r["covariance_type"] for r in table)):
            rows = sorted((r for r in table if r["covariance_type"] == ctype),
                          key=lambda r: r["n_components"])
            ax.plot([r["n_components"] for r in rows], [r[criterion] for r in rows],
                    marker="o", color=f"C{i}", label=ctype)
        ax.plot(chosen["n_components"], chosen[criterion], marker="*", ms=18, color="gold",
                markeredgecolor="black", linestyle="none", label="chosen", zorder=4)
        ax.set_xlabel("number of components")
        ax.set_ylabel(criterion.upper() + " (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return Figure("selection", "Model selection",
                  f"BIC and AIC of every candidate; the star marks the one chosen by "
                  f"{run.selection['criterion'].upper()} ({chosen['n_components']} components, "
                  f"{chosen['covariance_type']} covariances).", _png(fig))


def make_figures(run: RunSummary) -> list[Figure]:
    import matplotlib

    matplotlib.use("Agg")
    estimator = run.estimator
    labels = estimator.predict(run.sample) if run.sample is not None else None
    figures = [objective_figure(run), weights_figure(run, estimator, labels),
               projection_figure(run, estimator, labels), means_figure(run, estimator)]
    if run.selection is not None:
        figures.append(selection_figure(run))
    return figures


# ------------------------------------------------------------------------ the page

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f3f3f3; }
tr.chosen td { background: #fff4c2; font-weight: 600; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.note { color: #8a4b00; }
"""


def _rows(pairs) -> str:
    return "\n".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                     for k, v in pairs)


def render_html(run: RunSummary, figures: list[Figure]) -> str:
    record, attrs = run.record, run.attrs
    ctype = record.attrs["params"].get("covariance_type")
    facts = [
        ("run store", run.path),
        ("status", attrs.get("status")),
        ("created", attrs.get("created")),
        ("model", f"{run.kind.name}, {record.n_components} components"
         + (f", {ctype} covariances" if ctype else "")),
        ("iterations", f"{record.attrs.get('n_iter')} (converged: "
                       f"{record.attrs.get('converged')})"),
        (f"final {run.kind.objective}", f"{record.objective:.10g}"),
        ("fit time", _fit_time(run.seconds)),
        ("reads of the data", _reads(attrs.get("passes"))),
        ("data", (attrs.get("config") or {}).get("data", {}).get("path")),
        ("rows x features", " x ".join(str(v) for v in
                                       attrs.get("fingerprint", {}).get("shape", []))),
        ("daskem", (attrs.get("versions") or {}).get("daskem")),
    ]
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
             f"<title>daskem report: {html.escape(run.path)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>daskem report</h1><p>{html.escape(run.path)}</p>",
             f"<table>{_rows(facts)}</table>"]
    if run.sample is None:
        parts.append(f"<p class='note'>No data sample: {html.escape(run.sample_note)}</p>")
    if run.selection is not None:
        head = ("<tr><th>K</th><th>covariance</th><th>log-likelihood</th><th>parameters</th>"
                "<th>BIC</th><th>AIC</th><th>iterations</th><th>converged</th></tr>")
        body = "".join(
            f"<tr class='{'chosen' if r['chosen'] else ''}'><td>{r['n_components']}</td>"
            f"<td>{html.escape(r['covariance_type'])}</td><td>{r['log_likelihood']:.10g}</td>"
            f"<td>{r['n_parameters']}</td><td>{r['bic']:.10g}</td><td>{r['aic']:.10g}</td>"
            f"<td>{r['n_iter']}</td><td>{r['converged']}</td></tr>"
            for r in run.selection["table"])
        parts.append(f"<h2>Candidates</h2><table>{head}{body}</table>")
    for fig in figures:
        data = base64.b64encode(fig.png).decode()
        parts.append(f"<figure id='{fig.name}'><h2>{html.escape(fig.title)}</h2>"
                     f"<img alt='{html.escape(fig.title)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>")
        if fig.name == "means":
            parts.append(_means_table(run))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _reads(passes: dict | None) -> str:
    if not passes:
        return "not recorded"
    passes = dict(passes)
    return format_passes(passes, bool(passes.pop("resumed", False))).removeprefix(
        "read the data ")


def _fit_time(seconds: list[float]) -> str:
    if not seconds:
        return "not recorded"
    passes = seconds[1:]
    text = f"{sum(seconds):.1f} s (initialisation {seconds[0]:.1f} s"
    if passes:
        text += f", {len(passes)} EM passes, {np.mean(passes):.2f} s each on average"
    return text + ")"


def _means_table(run: RunSummary) -> str:
    centers = _centers(run.estimator)
    space = " (standardised features)" if run.record.standardize is not None else ""
    head = "<tr><th>component</th>" + "".join(
        f"<th>{html.escape(str(name))}</th>" for name in _features(run, centers.shape[1]))
    body = "".join(f"<tr><th>{k}</th>" + "".join(f"<td>{v:.6g}</td>" for v in row) + "</tr>"
                   for k, row in enumerate(centers))
    return f"<h3>Feature means per component{space}</h3><table>{head}</tr>{body}</table>"


def write_report(store_path: str, out: str | None = None, *, sample_rows: int = 4000,
                 storage_options: dict | None = None) -> str:
    """Write ``report.html`` and its PNGs into ``out`` (default ``<store>-report`` beside the
    run store, on its filesystem: a local folder or an object store, with the run store's
    ``storage_options``). Returns the page's path or URL."""
    import fsspec

    run = read_run(store_path, sample_rows, storage_options=storage_options)
    figures = make_figures(run)
    target = str(out) if out is not None else default_output(store_path)
    fs, root = fsspec.core.url_to_fs(target, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    for fig in figures:
        fs.pipe_file(f"{root}/{fig.name}.png", fig.png)
    fs.pipe_file(f"{root}/report.html", render_html(run, figures).encode())
    return f"{target.rstrip('/')}/report.html"
