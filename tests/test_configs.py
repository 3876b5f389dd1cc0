"""Every shipped config loads; every config mistake names its key and exits with code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from daskem.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_every_config_the_docs_name_is_shipped():
    named = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "configs").glob("*.yaml"))]:
        named |= set(re.findall(r"configs/(\w+\.yaml)", doc.read_text()))
    assert named, "the README names no config"
    assert named <= {p.name for p in CONFIGS}, named - {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    from daskem.steps import build_estimator

    config = load_config(path)
    # Every model key the file sets reaches the estimator, under the estimator's name.
    params = build_estimator(config).get_params()
    renamed = {"n_components": "n_clusters"} if config.model.kind == "kmeans" else {
        "init": "init_params"}
    for key in config.model.model_fields_set - {"kind"}:
        if key == "n_components" and config.select is not None:
            continue  # select's grid sets it
        assert params[renamed.get(key, key)] == getattr(config.model, key), key
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert any(re.search(r"daskem (run|select) configs/", line) for line in header), \
        "say how to run it"


def write(tmp_path, raw) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


BASE = {"data": {"path": "data/demo.zarr"}, "run": {"store": "runs/x.zarr"}}


@pytest.mark.parametrize("change,message", [
    ({"model": {"colour": "red"}}, "model.colour: unknown key"),
    ({"model": {"n_component": 3}},
     "model.n_component: unknown key (did you mean model.n_components?)"),
    ({"model": {"n_components": "many"}}, "model.n_components"),
    ({"model": {"covariance_type": "ful"}}, "model.covariance_type: expected one of"),
    ({"model": {"kind": "kmeans", "init": "kmeans"}}, "init 'kmeans' is not available"),
    ({"fit": {"split_every": 1}}, "fit.split_every"),
    ({"cluster": {"address": "tcp://a:1", "scheduler_file": "s.json"}}, "either address"),
    ({"data": {}}, "data.path: required key is missing"),
])
def test_config_mistakes_name_the_key(tmp_path, change, message):
    raw = {k: dict(v) for k, v in BASE.items()}
    raw.update(change)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, raw))


def test_overrides(tmp_path):
    config = load_config(write(tmp_path, BASE), ["model.n_components=12",
                                                 "model.covariance_type=diag"])
    assert config.model.n_components == 12 and config.model.covariance_type == "diag"
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(write(tmp_path, BASE), ["model.n_components"])
    # A bad value given by --set names the --set, not the file.
    with pytest.raises(ConfigError, match=re.escape(
            "--set 'data.missing=marginalise': data.missing: expected one of 'error', "
            "'drop', 'marginalize'")):
        load_config(write(tmp_path, BASE), ["data.missing=marginalise"])


def test_python_tags_are_refused(tmp_path):
    path = write(tmp_path, "data: !!python/object/apply:os.system ['echo hacked']\n"
                           "run: {store: x}\n")
    with pytest.raises(ConfigError, match="tag that is not allowed"):
        load_config(path)


def test_result_hash_ignores_cluster_and_output():
    a = RunConfig.model_validate(BASE)
    b = RunConfig.model_validate({**BASE, "cluster": {"n_workers": 3},
                                  "output": {"labels": False}})
    c = RunConfig.model_validate({**BASE, "model": {"n_components": 3}})
    assert a.result_hash() == b.result_hash() != c.result_hash()




@pytest.mark.parametrize("change,message", [
    ({"model": {"colour": "red"}}, "model.colour: unknown key"),
    ({"model": {"n_component": 3}},
     "model.n_component: unknown key (did you mean model.n_components?)"),
    ({"model": {"n_components": "many"}}, "model.n_components"),
    ({"model": {"covariance_type": "ful"}}, "model.covariance_type"),
    ({"data": {"path": "no/such/store.zarr"}}, "data.path: no Zarr store"),
    ({"model": {"n_components": 100000}}, "model.n_components: 100000 is larger than"),
])
def test_validate_exits_with_config_code(tmp_path, small_store, change, message):
    raw = {"data": {"path": str(small_store)}, "run": {"store": str(tmp_path / "r.zarr")}}
    for section, values in change.items():
        raw[section] = {**raw.get(section, {}), **values}
    result = run_cli("validate", str(write(tmp_path, raw)))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1  # one line


def test_validate_good_config(tmp_path, small_store):
    raw = {"data": {"path": str(small_store)}, "run": {"store": str(tmp_path / "r.zarr")}}
    result = run_cli("validate", str(write(tmp_path, raw)))
    assert result.returncode == 0, result.stderr
    assert "3,000 rows x 4 features" in result.stdout


def test_readme_documents_every_config_key():
    """The config reference in the README lists every key the config models accept."""
    from pydantic import BaseModel

    readme = (ROOT / "README.md").read_text()

    def keys(model: type[BaseModel], prefix: str):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            nested = [a for a in getattr(annotation, "__args__", (annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
            if nested:
                yield from keys(nested[0], f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    missing = [key for key in keys(RunConfig, "") if f"`{key}`" not in readme]
    assert not missing, f"undocumented config keys: {missing}"
