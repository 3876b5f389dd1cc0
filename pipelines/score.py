"""The scoring pipeline: label and score a data source with a fitted run store's model.

    python pipelines/score.py runs/gmm.zarr                       # the run's own data
    python pipelines/score.py runs/gmm.zarr configs/other.yaml --out scores.zarr
"""

from __future__ import annotations

import argparse

from daskem.config import load_config
from daskem.progress import Reporter
from daskem.runner import predict_job


def score(run_store: str, data_config: str | None, out: str | None) -> int:
    config = load_config(data_config) if data_config else None
    return predict_job(run_store, Reporter(), data_config=config, out=out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_store")
    parser.add_argument("data_config", nargs="?")
    parser.add_argument("--out")
    args = parser.parse_args()
    raise SystemExit(score(args.run_store, args.data_config, args.out))
