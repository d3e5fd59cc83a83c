"""A snapshot's per-column statistics (count, missing, mean, stddev, min, max, median), and
computing them in a thread beside the split and the gather.

Why a thread: between the load and the fit pgml.train runs on one core (the split, the
encodings, the gather, the preprocessing) while the second waits; the statistics need only
the loaded columns, and numpy releases the GIL in the reductions and the partition that are
nearly all of their work (0.13 s of 1M x 11 on the 2-core dev box, docs/benchmarks.md issue
12 round 8). The thread only computes: ``Beside.finish`` writes the row from the calling
thread (plpy is not thread-safe), and a train that fails before it writes nothing - the
thread then ends on its own, holding only its references to the arrays.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from inference import store


def analyze(values: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per-column statistics over all rows (NULL counted as missing), stored with the snapshot.

    The same numbers, bit for bit, as numpy's mean, std, min, max and median of the column's
    non-NULL values, with less work: the sum that gives the mean also says whether there is
    a NaN at all (no mask then), and the deviations and the median's partition are computed
    in one scratch array reused for every column instead of fresh temporaries per call
    (first-touching fresh memory is slow here).
    """
    out = {}
    scratch = np.empty(max((np.size(c) for c in values.values()), default=0))
    for name, col in values.items():
        col = np.asarray(col, dtype=np.float64)  # native order: the same sums as numpy's own
        total = np.add.reduce(col) if col.size else 0.0
        missing = 0
        if np.isnan(total):  # a NaN (or inf - inf): count and drop the NaN
            nan = np.isnan(col)
            missing = int(nan.sum())
            if missing:
                col = col[~nan]
                total = np.add.reduce(col) if col.size else 0.0
        n = col.size
        stats = {"count": int(n), "missing": missing}
        if n:
            mean = total / n  # numpy's mean: the pairwise sum divided by the count
            work = scratch[:n]
            np.subtract(col, mean, out=work)  # numpy's var: the same steps, in place
            np.multiply(work, work, out=work)
            stddev = np.sqrt(np.add.reduce(work) / n)
            np.copyto(work, col)
            k = n // 2
            work.partition(k)
            median = work[k] if n % 2 else (work[:k].max() + work[k]) / 2.0
            stats.update(mean=float(mean), stddev=float(stddev), min=float(col.min()),
                         max=float(col.max()), median=float(median))
        out[name] = stats
    return out


class Beside:
    """``analyze(values)`` started in a thread now, stored with snapshot ``snapshot_id`` by
    ``finish`` (which waits for it)."""

    def __init__(self, snapshot_id: int, n: int, values: dict[str, np.ndarray],
                 columns: list[dict]) -> None:
        self._row = (snapshot_id, n, columns)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgml-statistics")
        # a copy of the name -> array map: encoding.fit adds the encoded columns to the caller's
        self._future = pool.submit(analyze, dict(values))
        pool.shutdown(wait=False)  # the one task still runs; nothing else will be queued

    def finish(self) -> None:
        snapshot_id, n, columns = self._row
        store.finish_snapshot(snapshot_id, n, self._future.result(), columns)
