"""The pass machinery: map over chunks, fixed-order tree reduction, payload handling."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

import daskem.engine.reduce as reduce_module
from daskem.engine.data import as_chunked
from daskem.engine.reduce import iteration_label, number_words, tree_keys


class Ordered:
    """A 'sum' that records the order in which chunks were merged."""

    def __init__(self, items):
        self.items = items

    def __add__(self, other):
        return Ordered(self.items + other.items)


def tag_chunk(x, w, offset, payload):
    return Ordered([(offset, x.shape[0], float(x.sum()) * payload)])


@pytest.mark.parametrize("split_every", [2, 3, 8, 100])
@pytest.mark.parametrize("chunks", [(1000,), (100,) * 10, (1, 0, 499, 500), (7,) * 142 + (6,)])
def test_map_reduce_visits_every_chunk_in_order(split_every, chunks):
    X = np.arange(1000 * 2, dtype=float).reshape(1000, 2)
    data = as_chunked(da.from_array(X, chunks=(chunks, (2,))))
    with dask.config.set(scheduler="synchronous"):
        result = data.map_reduce(tag_chunk, 2.0, phase="test", split_every=split_every)
    offsets = [o for o, _, _ in result.items]
    assert offsets == sorted(offsets) == list(np.concatenate([[0], np.cumsum(chunks)[:-1]]))
    assert sum(s for _, _, s in result.items) == pytest.approx(2.0 * X.sum())


def test_tree_shape_is_fixed_by_chunks_and_fan_in():
    graph: dict = {}
    root = tree_keys([("c", i) for i in range(10)], 3, "r", graph)
    assert root == ("r", 2, 0)
    assert graph[("r", 0, 0)][1] == [("c", 0), ("c", 1), ("c", 2)]
    assert graph[("r", 0, 3)][1] == [("c", 9)]
    assert graph[("r", 1, 1)][1] == [("r", 0, 3)]
    with pytest.raises(ValueError, match="split_every must be at least 2"):
        tree_keys([("c", 0)], 1, "r", {})


def test_large_payload_goes_into_the_graph_once(monkeypatch):
    X = np.ones((100, 2))
    data = as_chunked(da.from_array(X, chunks=(10, 2)))
    monkeypatch.setattr(reduce_module, "EMBED_PAYLOAD_BYTES", 0)
    root = reduce_module.map_reduce(data.chunks, None, data.offsets, tag_chunk, 3.0,
                                    phase="test", compute=False)
    graph = dict(root.dask)
    assert sum(1 for k in graph if isinstance(k, str) and k.startswith("daskem-params")) == 1
    with dask.config.set(scheduler="synchronous"):
        (result,) = dask.compute(root)
    assert sum(s for _, _, s in result.items) == pytest.approx(600.0)


def test_keys_name_their_phase():
    data = as_chunked(da.from_array(np.ones((40, 2)), chunks=(10, 2)))
    root = reduce_module.map_reduce(data.chunks, None, data.offsets, tag_chunk, 1.0,
                                    phase="estep", label=iteration_label(3), compute=False)
    names = {k[0] for k in dict(root.dask) if isinstance(k, tuple)}
    assert any(n.startswith("daskem-estep-iteration-three-") for n in names)
    assert any(n.startswith("daskem-reduce-iteration-three-") for n in names)
    # The dashboard names a task by its key's words up to the first with a digit: the
    # iteration is in that name.
    from dask.utils import key_split

    assert {key_split(n) for n in names if n.startswith("daskem-estep")} == \
        {"daskem-estep-iteration-three"}


def test_number_words():
    cases = {0: "zero", 7: "seven", 19: "nineteen", 20: "twenty", 42: "forty-two",
             100: "one-hundred", 127: "one-hundred-twenty-seven", 1000: "one-thousand",
             20_315: "twenty-thousand-three-hundred-fifteen"}
    assert {n: number_words(n) for n in cases} == cases
    assert all(word.isalpha() for n in range(0, 5000, 7) for word in number_words(n).split("-"))
