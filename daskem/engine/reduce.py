"""One pass over the data: a kernel mapped over row-chunks, then a fixed-order tree reduction.

This is the only module that builds dask graphs by hand. A pass is one ``dask.compute``:

    chunk i ──► kernel(x_i, w_i, offset_i, payload) ─┐
                                                       ├─► combine (fan-in ``split_every``,
    chunk i+1 ─► ...                                  ─┘    consecutive chunks, level by level)

The reduction tree depends only on the number of chunks and ``split_every``; partial
results are added left to right inside a node. The result therefore does not depend on the
number of workers, on which worker ran a task, or on a task that was retried.

Keys are named ``daskem-<phase>-<label>-<token>`` so the dashboard's task stream and
progress bars group them by phase (``daskem-estep``, ``daskem-reduce``, ...); an iteration's
label spells its number in words (:func:`iteration_label`: ``daskem-estep-iteration-seven``),
since the dashboard names a task by the words of its key before the first one with a digit,
so that the task stream's hover and the progress bars say which iteration a task is of. The
passes of a fit run inside distributed spans (:func:`span`: one per fit, one for the
initialisation, one per iteration), so the dashboard's Fine Performance Metrics page splits
the time of a fit by iteration and by phase.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import pickle
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dask
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

DEFAULT_SPLIT_EVERY = 8

# A payload is copied into every chunk task while all copies together stay below this;
# a larger one becomes one key of the graph, which costs the workers one more fetch
# (about 15 ms of latency per pass on a LocalCluster) but the scheduler no traffic.
EMBED_PAYLOAD_BYTES = 32 * 2**20


@contextlib.contextmanager
def span(name: str):
    """Tag the tasks of the passes made inside with a (nested) distributed span.

    Without a distributed scheduler the tag is an annotation nobody reads.
    """
    from distributed import span as distributed_span

    with distributed_span(name) as span_id:
        yield span_id


def in_span(name: str):
    """Decorator: run the function inside :func:`span` ``name``."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with span(name):
                return fn(*args, **kwargs)
        return wrapper
    return decorate


class _Payload:
    """An opaque holder, so that dask ships the payload as one value and never walks it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class ReadRows:
    """Rows ``start:stop`` of a row reader, read by the task itself.

    A task that reads its own rows needs no task upstream of it: a pass costs the
    scheduler one task per block of rows however finely the store is chunked.
    """

    __slots__ = ("reader", "start", "stop")

    def __init__(self, reader, start: int, stop: int) -> None:
        self.reader, self.start, self.stop = reader, start, stop

    def read(self):
        return self.reader.read(self.start, self.stop)


def dense_chunk(x):
    """A chunk as a NumPy array: a sparse chunk (``scipy.sparse``) is made dense here, one
    chunk at a time, so that the kernels see NumPy arrays only."""
    return x.toarray() if hasattr(x, "toarray") and hasattr(x, "nnz") else x


def _apply_kernel(kernel, x, w, offset, payload: _Payload):
    if isinstance(x, ReadRows):
        x = x.read()
    return kernel(dense_chunk(x), w, offset, payload.value)


def _combine(parts: list):
    return functools.reduce(operator.add, parts)


def tree_keys(keys: Sequence, split_every: int, name: str, graph: dict):
    """Add the reduction tree of ``keys`` to ``graph``; return the root's key."""
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    level = 0
    keys = list(keys)
    while len(keys) > 1:
        parents = []
        for j in range(0, len(keys), split_every):
            key = (name, level, j // split_every)
            graph[key] = (_combine, keys[j:j + split_every])
            parents.append(key)
        keys = parents
        level += 1
    return keys[0]


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """``n`` (0 to 999,999) in hyphenated English words: 127 -> one-hundred-twenty-seven."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{_ONES[n // 100]}-hundred" + (f"-{number_words(n % 100)}" if n % 100 else "")
    if n < 1_000_000:
        return (f"{number_words(n // 1000)}-thousand"
                + (f"-{number_words(n % 1000)}" if n % 1000 else ""))
    raise ValueError(f"{n}: too large to spell")


def iteration_label(n: int) -> str:
    """The key label of iteration ``n``'s tasks: ``iteration-seven``."""
    return f"iteration-{number_words(n)}"


def map_reduce(
    chunks: Sequence[Delayed | ReadRows],
    weight_chunks: Sequence[Delayed] | None,
    offsets: Sequence[int],
    kernel: Callable,
    payload: Any,
    *,
    phase: str,
    label: str = "",
    split_every: int = DEFAULT_SPLIT_EVERY,
    compute: bool = True,
    scheduler: str | None = None,
):
    """Run ``kernel(x, w, offset, payload)`` on every chunk and add the results up.

    ``chunks`` are the row-chunks of a dask array, or blocks a task reads itself.
    ``kernel`` must return an object whose ``+`` merges partial results. ``payload`` (the
    parameters of the models being fitted) is handed to every chunk task (see
    ``EMBED_PAYLOAD_BYTES``). With ``compute=False`` the ``Delayed`` root is returned;
    ``scheduler`` (for ``dask.compute``) is None for dask's default.
    """
    if not chunks:
        raise ValueError("the data have no chunks")
    # A fresh token every pass: keys of an earlier pass may still be held by the scheduler,
    # and the payload differs between passes even when the data do not.
    token = uuid.uuid4().hex[:16]
    suffix = f"{label}-{token}" if label else token
    map_name = f"daskem-{phase}-{suffix}"
    reduce_name = f"daskem-reduce-{suffix}"
    wrapped = _Payload(payload)
    graph: dict = {}
    if len(pickle.dumps(payload, protocol=5)) * len(chunks) <= EMBED_PAYLOAD_BYTES:
        payload_ref = wrapped
    else:
        payload_ref = f"daskem-params-{suffix}"
        graph[payload_ref] = wrapped
    deps = [c for c in chunks if isinstance(c, Delayed)]
    for i, chunk in enumerate(chunks):
        w_key = None
        if weight_chunks is not None:
            w_key = weight_chunks[i].key
        x_ref = chunk.key if isinstance(chunk, Delayed) else chunk
        graph[(map_name, i)] = (_apply_kernel, kernel, x_ref, w_key, int(offsets[i]),
                                payload_ref)
    if weight_chunks is not None:
        deps.extend(weight_chunks)
    root = tree_keys([(map_name, i) for i in range(len(chunks))], split_every, reduce_name,
                     graph)
    hlg = HighLevelGraph.from_collections(map_name, graph, dependencies=deps)
    result = Delayed(root, hlg, layer=map_name)
    if not compute:
        return result
    (value,) = dask.compute(result, scheduler=scheduler)
    return value
