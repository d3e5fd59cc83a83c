"""Compiled trees at scoring time: build (if need be) and load a model's library, and the
Scorer that answers ``pgml.predict`` with it.

Why a module apart from compiled_trees.py (which writes the C at training): this one is on the
first call of a brand-new backend, so importing it costs next to nothing -- os, json, struct,
ctypes; no numpy (a batch imports it when it comes), no onnxruntime, not the code generator.
The compiler, subprocess and tempfile are touched only when the cache lacks the library.

Cache: ``<dir>/<model id>-<key>.so`` with key = sha256 of (the sha256 of the source below its
header line -- written into the header as ``body_sha256``, so a load reads only the head of
the source -- CFLAGS, the compiler's path); <dir> is ``$PGML_COMPILED_TREES_DIR`` or
``<tmp>/pgml-compiled-<uid>``, created 0700 and refused unless this user owns it and no one
else may write to it -- a library found there is run, so only this user may put one there.
The source itself comes from pgml.files, as trusted as the pickled model beside it (which
unpickling runs too).

Which side answers: rows and batches of any size on the CPU go to the library (a batch of
100 trees of depth 6 scores ~1.4M distinct rows/s on one core against onnxruntime
TreeEnsemble's ~430k, same run; large batches split across threads); with a CUDA device,
batches from GPU_MIN_ROWS rows go to the model's ONNX scorer, whose tensor graph runs there.
That scorer is loaded on first need (and by predict_relation, which scores with it). Both
passed parity with the native model at training.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys

from inference.errors import PgmlError
from inference.rows import feature_rows

FORMAT = "pgml-compiled-trees 1"
CFLAGS = ("-O2", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-w")
COMPILE_TIMEOUT_S = 120
# A build prunes the cache to this many libraries, least recently used first (models come and
# go; a pruned library is rebuilt from its source if its model is scored again).
MAX_LIBRARIES = 500
# With a CUDA device, batches from this many rows go to the ONNX scorer's tensor graph on the
# GPU (routing.GPU_MIN_ROWS, the same number); on the CPU the compiled trees score every batch.
GPU_MIN_ROWS = 10_000
# Batches from this many rows may be split across ``threads`` (runtime.PARALLEL_MIN_ROWS).
PARALLEL_MIN_ROWS = 10_000
# Read by bulk.py: batches below this many rows are scored by the compiled trees -- on the CPU
# all of them (CompiledScorer.graph_for says which graph scores a given batch exactly).
COMPILED_MAX_ROWS = sys.maxsize


def header(source: str) -> dict:
    """The JSON header of a source written by compiled_trees.c_source."""
    first = source.split("\n", 1)[0]
    if not (first.startswith("/* ") and first.endswith(" */")):
        raise PgmlError("not a compiled-trees source (no header)")
    found = json.loads(first[3:-3])
    if found.get("format") != FORMAT:
        raise PgmlError(f"compiled-trees format {found.get('format')!r}, expected {FORMAT!r}")
    return found


def compiler() -> str | None:
    """The C compiler: $CC, else cc or gcc on PATH or in /usr/bin; None when there is none."""
    names = [os.environ.get("CC"), "cc", "gcc"]
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]
    for name in filter(None, names):
        for candidate in ([name] if os.sep in name else [os.path.join(d, name) for d in dirs]):
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return None


def cache_dir() -> str | None:
    """This user's directory of compiled libraries, created if need be; None when unsafe."""
    path = os.environ.get("PGML_COMPILED_TREES_DIR")
    if not path:
        tmp = os.environ.get("TMPDIR") or "/tmp"  # tempfile.gettempdir()'s first choices
        path = os.path.join(tmp, f"pgml-compiled-{os.getuid()}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None  # someone else could plant a library here
    return path


def body_sha256(source: str) -> str:
    """The sha256 of the source below its header line (the header, with the parity record,
    is a comment: it does not change the library)."""
    try:
        from _sha256 import sha256  # the built-in: hashlib would load OpenSSL (ms, #1175)
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import sha256
    return sha256(source.split("\n", 1)[-1].encode()).hexdigest()


def library_path(model_id: int, body_hash: str, cc: str) -> str | None:
    """``<cache>/<model id>-<key>.so``, key = sha256 of (body hash, CFLAGS, compiler)."""
    directory = cache_dir()
    if directory is None:
        return None
    from _sha256 import sha256

    key = sha256("\0".join((body_hash, " ".join(CFLAGS), cc)).encode()).hexdigest()[:24]
    return os.path.join(directory, f"{int(model_id)}-{key}.so")


def build(source: str, model_id: int) -> str | None:
    """The compiled library's path, building it when the cache lacks it; None if it cannot."""
    cc = compiler()
    path = None if cc is None else library_path(model_id, body_sha256(source), cc)
    if path is None or os.path.exists(path):
        return path
    started = start_build(source)
    return None if started is None else started.finish(model_id)


def start_build(source: str) -> Build | None:
    """Start compiling ``source`` in the background; None when there is no compiler or cache.

    Why apart from build: pgml.train starts the compiler as soon as the model is fitted and
    makes the ONNX graphs while it runs (a subprocess: another core), before the model's id
    -- part of the library's name -- exists; ``Build.finish`` names it then."""
    cc = compiler()
    directory = None if cc is None else cache_dir()
    if directory is None:
        return None
    import subprocess
    import tempfile

    c_path = None
    try:
        fd, c_path = tempfile.mkstemp(suffix=".c", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(source)
        so_tmp = c_path[:-2] + ".so.tmp"
        proc = subprocess.Popen([cc, *CFLAGS, "-o", so_tmp, c_path, "-lm"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        if c_path is not None:
            _unlink(c_path)
        return None
    return Build(proc, cc, body_sha256(source), c_path, so_tmp)


class Build:
    """A compile in progress: ``finish`` waits for it and puts the library into the cache
    under the model's id; ``cancel`` stops it. Either removes its temporary files."""

    def __init__(self, proc, cc: str, body_hash: str, c_path: str, so_tmp: str):
        import time

        self.proc, self.cc, self.body_hash = proc, cc, body_hash
        self.c_path, self.so_tmp = c_path, so_tmp
        self.deadline = time.monotonic() + COMPILE_TIMEOUT_S

    def finish(self, model_id: int) -> str | None:
        """The library's path in the cache, or None (compiler failed, timed out, no cache)."""
        import subprocess
        import time

        try:
            try:
                code = self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return None
            path = library_path(model_id, self.body_hash, self.cc)
            if code != 0 or path is None:
                return None
            os.replace(self.so_tmp, path)  # atomic: a concurrent backend sees all or nothing
            _prune(os.path.dirname(path), keep=path)
            return path
        except OSError:
            return None
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop the compiler if it still runs and remove the temporary files (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for leftover in (self.c_path, self.so_tmp):
            _unlink(leftover)

    def __del__(self):  # dropped unfinished (an error on the way): no compiler, no files left
        try:
            self.cancel()
        except Exception:  # noqa: BLE001, S110 - at interpreter exit os may be half gone
            pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _prune(directory: str, keep: str) -> None:
    """Remove the least recently used libraries beyond MAX_LIBRARIES (by access time; a
    backend that has one loaded keeps its mapping, the file name is merely freed)."""
    try:
        entries = [e for e in os.scandir(directory) if e.name.endswith(".so")]
        if len(entries) <= MAX_LIBRARIES:
            return
        entries.sort(key=lambda e: max(e.stat().st_atime, e.stat().st_mtime))
        for entry in entries[: len(entries) - MAX_LIBRARIES]:
            if entry.path != keep:
                os.unlink(entry.path)
    except OSError:
        pass  # a concurrent prune got there first, or the directory went: nothing to do


class CompiledTrees:
    """A loaded library: ``pgml_one`` scores the row in ``pgml_input``, ``rows`` a matrix."""

    def __init__(self, path: str, meta: dict):
        self.path, self.meta = path, meta
        self.n_features, self.n_outputs = meta["n_features"], meta["n_outputs"]
        held = ctypes.PyDLL(path)  # keeps the GIL: a row is shorter than releasing it
        free = ctypes.CDLL(path)  # releases it: batches
        if held.pgml_n_features() != self.n_features or held.pgml_n_outputs() != self.n_outputs:
            raise PgmlError(f"compiled library {path} does not match its source's header")
        self._one = held.pgml_one
        self._one.restype = ctypes.c_double
        self._one.argtypes = ()
        self._rows = free.pgml_rows
        self._rows.restype = None
        self._rows.argtypes = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
        self._input = (ctypes.c_float * self.n_features).in_dll(held, "pgml_input")
        self._pack = struct.Struct(f"{self.n_features}f").pack_into
        self._keep = (held, free)

    def one(self, values) -> float:
        """The row's prediction (class index for classification); struct.error / TypeError
        when the values are not n_features numbers (None among them, say)."""
        self._pack(self._input, 0, *values)
        return self._one()

    def rows(self, X, threads: int = 1):
        """(outputs [n, n_outputs] float64, labels [n] int64) of the rows of ``X``.

        From PARALLEL_MIN_ROWS rows with ``threads > 1``: contiguous parts scored at once, the
        calling thread taking one and short-lived helpers the others (the CDLL call releases
        the GIL), all joined before returning -- each row's answer is the one-thread answer.
        """
        import numpy as np

        X = np.ascontiguousarray(X, dtype=np.float32)
        n = len(X)
        out = np.empty((n, self.n_outputs), dtype=np.float64)
        labels = np.empty(n, dtype=np.int64)
        parts = max(1, min(int(threads), n // (PARALLEL_MIN_ROWS // 2))) \
            if n >= PARALLEL_MIN_ROWS else 1
        bounds = [n * k // parts for k in range(parts + 1)]

        def score(k: int) -> None:
            lo, hi = bounds[k], bounds[k + 1]
            self._rows(X[lo:].ctypes.data, hi - lo, out[lo:].ctypes.data,
                       labels[lo:].ctypes.data)

        if parts == 1:
            score(0)
            return out, labels
        import threading

        helpers = [threading.Thread(target=score, args=(k,), daemon=True)
                   for k in range(1, parts)]
        for helper in helpers:
            helper.start()
        score(0)
        for helper in helpers:
            helper.join()
        return out, labels


def load(source: str, model_id: int) -> CompiledTrees | None:
    """The model's library, built into the cache if need be; None when it cannot be had."""
    try:
        meta = header(source)
    except (PgmlError, ValueError):
        return None
    if meta.get("body_sha256", body_sha256(source)) != body_sha256(source):
        return None  # the header does not belong to this source
    path = build(source, model_id)
    if path is None:
        return None
    try:
        return CompiledTrees(path, meta)
    except (OSError, AttributeError, PgmlError):
        return None


class CompiledScorer:
    """The Scorer interface (runtime.Scorer) over compiled trees, without importing numpy.

    ``runtime`` stays 'onnx' -- the model's runtime, what bulk.py and the model row speak of;
    ``graph`` 'compiled' says what scores a row. ``predict_one`` writes the library's one
    input buffer: it is for a backend's own thread (PL/Python calls from one), not for
    threads of its own -- batches (``predict``) share nothing and may be split across them.
    """

    runtime = "onnx"
    graph = "compiled"
    providers = ["CompiledTrees"]
    feature_names = None

    def __init__(self, trees: CompiledTrees, task: str, n_features: int, onnx_scorer):
        meta = trees.meta
        if meta["task"] != task or meta["n_features"] != n_features:
            raise PgmlError(f"the compiled trees are a {meta['task']} model of "
                            f"{meta['n_features']} features, not {task} of {n_features}")
        self.trees, self._make_onnx, self._onnx, self._cuda = trees, onnx_scorer, None, None
        self.task, self.n_features = task, n_features
        try:  # class values as numbers, as runtime.OnnxScorer answers (booleans: 0.0 / 1.0)
            self._labels = None if meta["classes"] is None else \
                [float(c) for c in meta["classes"]]
        except (TypeError, ValueError) as exc:
            raise PgmlError(f"class values that are not numbers: {meta['classes']!r}") from exc
        self.has_proba = task == "classification"
        self._pack, self._input, self._one = trees._pack, trees._input, trees._one
        self._joint = task != "classification" and trees.n_outputs != 1

    @property
    def classes(self):
        if self._labels is None:
            return None
        import numpy as np

        return np.asarray(self._labels, dtype=np.float64)

    @property
    def onnx(self):
        """The model's ONNX scorer (default graph, routed to CUDA where there is one)."""
        if self._onnx is None:
            self._onnx = self._make_onnx()
        return self._onnx

    @property
    def cuda(self) -> bool:
        """Whether large batches go to the GPU (the ONNX scorer routed to CUDA). Asked of
        onnxruntime only on a host with a CUDA device: elsewhere the answer is no."""
        if self._cuda is None:
            from inference.runtime import cuda_device_present

            self._cuda = cuda_device_present() and bool(getattr(self.onnx, "cuda", False))
        return self._cuda

    def graph_for(self, n_rows: int) -> str:
        """Which graph scores a batch of ``n_rows``: 'compiled', or the ONNX scorer's on a GPU."""
        if n_rows >= GPU_MIN_ROWS and self.cuda:
            return getattr(self.onnx, "last_graph", "tensor")
        return "compiled"

    def predict_one(self, values) -> float:
        if not self._joint:
            try:
                self._pack(self._input, 0, *values)
            except (struct.error, TypeError):  # NULL element, wrong count: numpy says what
                pass
            else:
                value = self._one()
                return self._labels[int(value)] if self._labels is not None else value
        import numpy as np

        return float(self.predict(np.array(values, dtype=np.float64))[0])

    def predict(self, X, threads: int = 1):
        X = self._rows(X)
        if len(X) >= GPU_MIN_ROWS and self.cuda:
            return self.onnx.predict(X, threads)
        out, labels = self.trees.rows(X, threads)
        if self._labels is not None:
            return self.classes[labels]
        return out.reshape(-1) if out.shape[1] == 1 else out

    def predict_proba(self, X):
        if not self.has_proba:
            raise PgmlError("predict_proba needs a classification model; this one is regression")
        X = self._rows(X)
        if len(X) >= GPU_MIN_ROWS and self.cuda:
            return self.onnx.predict_proba(X)
        return self.trees.rows(X)[0]

    def _rows(self, X):
        return feature_rows(X, self.n_features)


def load_scorer(head: bytes, source, model_id: int, task: str, n_features: int,
                onnx_scorer) -> CompiledScorer | None:
    """A CompiledScorer for the model's ``trees.c``, or None (no compiler, failed build...).

    ``head``: the source's first bytes (at least its header line); ``source``: a callable that
    reads the whole source, called only when the cache lacks the library. ``onnx_scorer``: a
    callable that loads the model's ONNX scorer, called on a large batch's first need only.
    """
    head = bytes(head).decode(errors="replace")
    trees = None
    try:
        meta = header(head)
    except (PgmlError, ValueError):  # a header longer than the head: the whole source says
        meta = {}
    cc = compiler()
    path = None if cc is None or not meta.get("body_sha256") else \
        library_path(model_id, meta["body_sha256"], cc)
    if path is not None and os.path.exists(path):
        try:
            trees = CompiledTrees(path, meta)
        except (OSError, AttributeError, PgmlError):
            trees = None
    if trees is None:
        whole = source()
        if whole is None:
            return None
        trees = load(bytes(whole).decode(), model_id)
    if trees is None:
        return None
    try:
        return CompiledScorer(trees, task, n_features, onnx_scorer)
    except PgmlError:
        return None
