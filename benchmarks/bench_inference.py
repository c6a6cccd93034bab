"""CPU inference speed: torch eager versus onnxruntime on 32x32 RGB images.

For each model a CDCClusterer is fitted for one epoch on a few random images
(only the speed matters here, not the clustering), exported to ONNX, and the
cluster probabilities of uint8 NHWC images are timed four ways:

* ``torch model``: the torch network under ``torch.no_grad`` (uint8 -> NCHW ->
  scaling -> probabilities, the same computation as the ONNX graph);
* ``estimator``: ``CDCClusterer.predict_proba`` called on each batch (adds input
  validation and the conversion to torch);
* ``ort session``: ``onnxruntime.InferenceSession.run`` on the same batches;
* ``OnnxClusterer``: ``OnnxClusterer.predict_proba`` called on each batch (adds
  the same input validation).

Each measurement cycles over the batches for ``--min-time`` seconds after one
warm-up call.

    python benchmarks/bench_inference.py           # both models, batch 1 and 64
    python benchmarks/bench_inference.py --models small_cnn --batch-sizes 1 16 256
    python benchmarks/bench_inference.py --min-time 2 --threads 1

On a machine shared with other work, pass ``--threads 1``: otherwise torch's
default thread pool can spend most of a small batch waiting for descheduled
threads, which exaggerates onnxruntime's lead at batch 1.

``small_cnn`` is what ``CDCClusterer()`` picks by default for 32x32 images on a
CPU; ``resnet18`` is the ResNet-18 with the CIFAR stem (the paper's CIFAR
backbone). Both run with the estimator's default head sizes (10 clusters,
instance_dim=128).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np
import onnxruntime
import torch

from deepclust import CDCClusterer
from deepclust.onnx import OnnxClusterer, export_onnx

_MODELS = {
    "small_cnn": {},  # CDCClusterer's own choice for 32x32 images on a CPU
    "resnet18": {"backbone": "resnet18", "stem": "cifar"},
}


def _images_per_second(function, batches, min_time):
    """Throughput of ``function(batch)`` over ``batches`` for ``min_time`` s."""
    function(batches[0])  # warm-up: first-call allocations and lazy initialisation
    n_images = 0
    start = time.perf_counter()
    while True:
        for batch in batches:
            function(batch)
            n_images += len(batch)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                return n_images / elapsed


def _fit_and_export(name, image_size, folder, seed):
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (10, image_size, image_size, 3), dtype=np.uint8)
    estimator = CDCClusterer(
        max_epochs=1, batch_size=10, device="cpu", random_state=seed, **_MODELS[name]
    )
    with warnings.catch_warnings():
        # One epoch on random pixels leaves clusters empty: irrelevant for speed.
        warnings.simplefilter("ignore")
        estimator.fit(train)
    path = export_onnx(estimator, os.path.join(folder, f"{name}.onnx"))
    return estimator, path


def _bench_model(name, args, folder):
    estimator, path = _fit_and_export(name, args.image_size, folder, args.seed)
    model = estimator._model().eval()
    rng = np.random.default_rng(args.seed + 1)
    rows = []
    for batch_size in args.batch_sizes:
        n_images = max(batch_size, args.n_images)
        images = rng.integers(
            0, 256, (n_images, args.image_size, args.image_size, 3), dtype=np.uint8
        )
        batches = [images[i : i + batch_size] for i in range(0, n_images, batch_size)]

        def torch_model(batch):
            with torch.no_grad():
                unit = model.scaler.to_unit(torch.from_numpy(batch).permute(0, 3, 1, 2))
                return model.cluster_probabilities(unit).numpy()

        clusterer = OnnxClusterer(path, batch_size=batch_size)
        if args.threads:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = args.threads
            clusterer.session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
        session = clusterer.session
        timings = {
            "torch model": _images_per_second(torch_model, batches, args.min_time),
            "estimator": _images_per_second(
                estimator.predict_proba, batches, args.min_time
            ),
            "ort session": _images_per_second(
                lambda batch, session=session: session.run(
                    ["probabilities"], {"input": batch}
                ),
                batches,
                args.min_time,
            ),
            "OnnxClusterer": _images_per_second(
                clusterer.predict_proba, batches, args.min_time
            ),
        }
        rows.append((name, batch_size, timings))
        _print_row(rows[-1])
    return rows


def _print_row(row):
    name, batch_size, timings = row
    speedup = timings["ort session"] / timings["torch model"]
    print(
        f"{name:<10} {batch_size:>6} "
        + " ".join(f"{v:>13.0f}" for v in timings.values())
        + f" {speedup:>8.2f}x",
        flush=True,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=list(_MODELS), choices=list(_MODELS)
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--n-images",
        type=int,
        default=128,
        help="distinct images the batches are cut from (at least one batch)",
    )
    parser.add_argument(
        "--min-time", type=float, default=1.0, help="seconds each measurement runs for"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads of both torch and onnxruntime (default: "
        "each library's own choice, usually one per core)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ort_threads = args.threads or "default"
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
        f"{onnxruntime.__version__} ({ort_threads} threads), {os.cpu_count()} CPUs; "
        f"{args.image_size}x"
        f"{args.image_size} RGB uint8 images; throughput in images/s"
    )
    print(
        f"{'model':<10} {'batch':>6} {'torch model':>13} {'estimator':>13} "
        f"{'ort session':>13} {'OnnxClusterer':>13} {'ort/torch':>9}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            _bench_model(name, args, folder)


if __name__ == "__main__":
    main()
