"""The fit pipeline behind ``daskem run``, step by step, on daskem's public API.

    python pipelines/fit.py configs/gmm.yaml [key.path=value ...]
"""

from __future__ import annotations

import sys

import numpy as np

from daskem.config import load_config
from daskem.io.outputs import write_outputs
from daskem.lease import Lease
from daskem.runner import (
    Reporter,
    build_estimator,
    check_workers,
    connect,
    fit_selection,
    model_record,
    open_data,
    open_store,
    output_names,
    probe_data,
    read_warm_model,
    warm_start,
)


def fit(config_path: str, overrides: list[str]) -> dict:
    config = load_config(config_path, overrides)
    reporter = Reporter()
    warm = read_warm_model(config)  # None unless model.init.from_run
    probe_data(config, warm)  # fail on bad data or an unusable warm start before any work
    # One job per run store (the lease), and workers that see what this client sees.
    with Lease(config.run.store) as lease, connect(config.cluster, reporter) as client:
        check_workers(client, config, lease)
        source = open_data(config, warm=warm)
        store = open_store(config, source, warm)
        rows = source.rows if source.rows is not None else source.X
        selection = None
        if config.select is not None:  # a grid of candidates in shared passes
            selection = fit_selection(config, rows, store, reporter)
            estimator = selection.best_estimator_
        else:
            estimator = build_estimator(config, **warm_start(config, source, warm))
            estimator.fit(rows, checkpoint=store, callback=lambda n, states: reporter.iteration(
                n, states, config.model.kind, config.model.max_iter))
        kind, arrays, attrs, history = model_record(estimator, source)
        history["seconds"] = np.asarray(store.pass_seconds())
        store.write_model(kind, arrays, attrs, history)
        if selection is not None:
            store.write_selection(selection)
        written = write_outputs(estimator, source, output_names(config),
                                config.output.path or config.run.store,
                                "outputs" if config.output.path is None else "")
        store.set_status("complete")
    return {"kind": kind, "n_iter": attrs["n_iter"], "outputs": written}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(fit(sys.argv[1], sys.argv[2:]))
