"""Throughput of clustering a folder of PNG files: one process versus a Dask cluster.

A CDCClusterer (the CPU default for the image size, "small_cnn") is fitted for
one epoch on a few images (only the speed matters here), exported to ONNX, and
``--n-images`` synthetic PNGs from ``make_shape_images`` are written to a
temporary folder. Then the whole folder is clustered, each file decoded once,
and the wall time of each way is turned into images/s:

* ``OnnxClusterer``: ``OnnxClusterer.predict_proba(folder)`` in this process;
* ``predict_files``: :func:`deepclust.batch_inference.predict_files` over the
  listed files in this process (adds the result DataFrame and the status rows);
* ``dask N x 1``: :func:`deepclust.batch_inference.predict_files_dask` on a
  ``LocalCluster`` of N worker processes with one thread each, computed into
  one pandas DataFrame on the client. The cluster is started, and a first
  run has loaded the model in every worker, before the timing starts.

Each measurement is the best of ``--repeats`` runs, so the page cache is warm:
these are decode-and-predict figures, not disk figures. Next to the images/s,
the CPU time per image (this process plus the Dask workers) shows the cost of
each way on a machine shared with other work, where wall times mostly show the
other work.

    python benchmarks/bench_batch_inference.py                  # 2,000 32x32 PNGs
    python benchmarks/bench_batch_inference.py --workers 1 2 4 --n-images 10000
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
import warnings

import onnxruntime
from PIL import Image

from deepclust import CDCClusterer
from deepclust.batch_inference import (
    iter_image_files,
    predict_files,
    predict_files_dask,
)
from deepclust.datasets import make_shape_images
from deepclust.onnx import OnnxClusterer


def _cpu_seconds():
    """User + system CPU time of this process, all its threads included."""
    times = os.times()
    return times.user + times.system


def _measure(function, n_images, repeats, client=None):
    """Images/s of the fastest of ``repeats`` calls, and its CPU ms per image.

    The CPU time adds this process (the client, and the scheduler of a
    LocalCluster) and, with ``client``, every worker process: a machine shared
    with other work slows the wall time, much less the CPU time.
    """
    best_wall, best_cpu = float("inf"), None
    for _ in range(repeats):
        cpu = _cpu_seconds() + (sum(client.run(_cpu_seconds).values()) if client else 0)
        start = time.perf_counter()
        function()
        wall = time.perf_counter() - start
        cpu = (
            _cpu_seconds()
            + (sum(client.run(_cpu_seconds).values()) if client else 0)
            - cpu
        )
        if wall < best_wall:
            best_wall, best_cpu = wall, cpu
    return n_images / best_wall, 1000 * best_cpu / n_images


def _print(name, measured):
    rate, cpu_ms = measured
    print(f"{name:<40} {rate:>8.0f} {cpu_ms:>12.2f}", flush=True)


def _prepare(folder, args):
    images, _ = make_shape_images(
        args.n_images, image_size=args.image_size, random_state=args.seed
    )
    estimator = CDCClusterer(
        n_clusters=10, max_epochs=1, batch_size=64, device="cpu", random_state=0
    )
    with warnings.catch_warnings():
        # One epoch leaves clusters empty: irrelevant for speed.
        warnings.simplefilter("ignore")
        estimator.fit(images[:256])
    model = str(estimator.export_onnx(os.path.join(folder, "model.onnx")))
    root = os.path.join(folder, "images")
    for index, image in enumerate(images):
        # 1,000 files per subfolder, as large collections are usually laid out.
        path = os.path.join(root, f"{index // 1000:04d}", f"{index:07d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path)
    return model, root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[2],
        help="Dask worker processes (one thread each) to measure",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--partition-size",
        type=int,
        default=250,
        help="files per Dask partition",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from dask.distributed import Client, LocalCluster

    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, onnxruntime {onnxruntime.__version__}; "
        f"{args.n_images} PNGs of {args.image_size}x{args.image_size} RGB, batch "
        f"{args.batch_size}; best of {args.repeats}; load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print(f"{'':<40} {'images/s':>8} {'CPU ms/image':>12}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        model, root = _prepare(folder, args)
        files = list(iter_image_files(root))
        n_images = len(files)

        clusterer = OnnxClusterer(model, batch_size=args.batch_size)
        rates = {
            "OnnxClusterer (1 process)": _measure(
                lambda: clusterer.predict_proba(root), n_images, args.repeats
            ),
            "predict_files (1 process)": _measure(
                lambda: predict_files(model, files, batch_size=args.batch_size),
                n_images,
                args.repeats,
            ),
            "predict_files (1 process, threads=1)": _measure(
                lambda: predict_files(
                    model, files, batch_size=args.batch_size, threads=1
                ),
                n_images,
                args.repeats,
            ),
        }
        for name, measured in rates.items():
            _print(name, measured)

        for n_workers in args.workers:
            with (
                LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                ) as cluster,
                Client(cluster) as client,
            ):

                def run():
                    result = predict_files_dask(
                        model,
                        files,
                        partition_size=args.partition_size,
                        batch_size=args.batch_size,
                        threads=1,
                    ).compute()
                    assert len(result) == n_images

                run()  # loads the model in the workers
                measured = _measure(run, n_images, args.repeats, client)
            _print(f"dask LocalCluster {n_workers} x 1 thread", measured)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
