"""The fit pipeline of ``daskem run``, step by step: the same functions, in the same order,
as :func:`daskem.runner.run_job` (a test checks that both leave the same run store).

    python pipelines/fit.py configs/gmm.yaml [key.path=value ...]
"""

from __future__ import annotations

import sys

from daskem import steps
from daskem.cluster import connect
from daskem.config import load_config
from daskem.lease import Lease
from daskem.progress import Reporter


def fit(config_path: str, overrides: list[str], reporter: Reporter | None = None) -> dict:
    reporter = reporter or Reporter()
    config = load_config(config_path, overrides)
    # 1. Checks before anything starts: config, data metadata, warm start, the store's config.
    plan = steps.prepare(config, reporter)
    if plan is None:
        return {"status": "complete", "store": config.run.store}
    config = plan.config  # (paths made absolute)
    # 2. One job per run store (the lease), a cluster whose workers see this client's files.
    with Lease(config.run.store) as lease, connect(config.cluster, reporter) as client:
        steps.take_store(plan, lease, client, reporter)
        # 3. The data (a resumed run reuses the stored standardisation) and the run store.
        source = steps.open_data(config, None if plan.fresh else plan.store, plan.warm)
        steps.report_data(source, reporter)
        store = steps.open_store(plan, source, reporter)
        resumed = store.read_pointer() is not None
        # 4. The fit, checkpointed every pass (resumes from the newest checkpoint).
        estimator, selection = steps.fit(plan, source, reporter)
        # 5. Model, history and selection into the store; then the per-sample outputs.
        record = steps.save_model(plan, estimator, selection, source)
        done = steps.write_job_outputs(plan, lease, estimator, record, source, resumed)
    reporter.info(steps.done_message(plan, record, source, done))
    return {"status": "complete", "store": config.run.store, "kind": record.kind.name,
            "n_iter": record.attrs["n_iter"], "outputs": done["outputs"]["arrays"]}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(fit(sys.argv[1], sys.argv[2:]))
