"""Clustering quality and fit time on 2,000 real 28x28 grayscale images, with peers.

The images are Fashion-MNIST (10 classes of clothing), read from the IDX files
that Debian's ``dataset-fashion-mnist`` package installs in
/usr/share/datasets/fashion-mnist (``apt-get install dataset-fashion-mnist``) or
from any folder holding the four ``*-ubyte.gz`` files of an MNIST-format dataset
(``--idx-dir``). Nothing is downloaded. Each seed draws its own 2,000 images of
the test split, fits the estimators with their defaults and prints ACC / NMI /
ARI and wall / CPU seconds, next to KMeans on the pixels and UMAP + KMeans (when
``umap-learn`` is installed), then a summary over seeds.

    python benchmarks/bench_images28.py                      # seeds 0-2, CDC and CD
    python benchmarks/bench_images28.py --models cdc --seeds 0 --threads 2
"""

from __future__ import annotations

import argparse
import gzip
import time
import warnings
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.metrics import clustering_scores

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def load_idx(folder, split="t10k"):
    """Images (N, 28, 28) uint8 and labels (N,) of an MNIST-format folder."""
    folder = Path(folder)
    images_file = folder / f"{split}-images-idx3-ubyte.gz"
    labels_file = folder / f"{split}-labels-idx1-ubyte.gz"
    for path in (images_file, labels_file):
        if not path.is_file():
            raise SystemExit(
                f"{path} not found: install Debian's dataset-fashion-mnist package "
                "or pass --idx-dir FOLDER with the MNIST-format *-ubyte.gz files."
            )
    with gzip.open(images_file) as stream:
        header = np.frombuffer(stream.read(16), ">i4")
        images = np.frombuffer(stream.read(), np.uint8).reshape(-1, *header[2:])
    with gzip.open(labels_file) as stream:
        labels = np.frombuffer(stream.read(), np.uint8, offset=8).astype(int)
    return images, labels


def _timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _umap_kmeans(pixels, seed):
    import umap

    embedding = umap.UMAP(min_dist=0.0, random_state=seed).fit_transform(pixels)
    return KMeans(10, n_init=10, random_state=seed).fit_predict(embedding)


def _fit(method, images, seed):
    if method == "cdc":
        cdc = CDCClusterer(10, random_state=seed).fit(images)
        return f"CDC ({cdc.n_epochs_} ep)", cdc.labels_
    cd = ContrastiveDisentangler(random_state=seed).fit(images)
    predicted = KMeans(10, n_init=10, random_state=seed).fit_predict(
        cd.transform(images)
    )
    return f"CD heads + KMeans ({cd.n_epochs_} ep)", predicted


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx-dir", default=str(DEBIAN_FASHION_MNIST))
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--models", nargs="+", default=["cdc", "cd"], choices=["cdc", "cd"]
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    all_images, all_labels = load_idx(args.idx_dir)
    try:
        import umap  # noqa: F401

        with_umap = True
    except ImportError:
        with_umap = False
    print(
        f"{args.n_images} images of {args.idx_dir} per seed, torch threads "
        f"{torch.get_num_threads()}, UMAP peer: {with_umap}"
    )
    print(
        f"{'method':<28} {'seed':>4} {'ACC':>6} {'NMI':>6} {'ARI':>6} "
        f"{'wall s':>7} {'CPU s':>7}"
    )
    results = defaultdict(list)
    for seed in args.seeds:
        chosen = np.random.default_rng(seed).permutation(len(all_images))
        images = all_images[chosen[: args.n_images]]
        labels = all_labels[chosen[: args.n_images]]
        pixels = images.reshape(len(images), -1).astype(np.float32) / 255
        kmeans = KMeans(10, n_init=10, random_state=seed)
        runs = [("KMeans on pixels", kmeans.fit_predict)]
        if with_umap:
            runs.append(("UMAP + KMeans", partial(_umap_kmeans, seed=seed)))
        for name, run in runs:
            predicted, wall, cpu = _timed(run, pixels)
            results[name].append((clustering_scores(labels, predicted), wall, cpu))
        for method in args.models:
            (name, predicted), wall, cpu = _timed(_fit, method, images, seed)
            results[name].append((clustering_scores(labels, predicted), wall, cpu))
        for name, rows in results.items():
            scores, wall, cpu = rows[-1]
            print(
                f"{name:<28} {seed:>4} {scores['acc']:6.3f} {scores['nmi']:6.3f} "
                f"{scores['ari']:6.3f} {wall:7.1f} {cpu:7.1f}",
                flush=True,
            )
    print(f"\nsummary over seeds {' '.join(map(str, args.seeds))}")
    print(
        f"{'method':<28} {'mean ACC':>8} {'worst ACC':>9} {'mean NMI':>8} "
        f"{'mean ARI':>8} {'wall s':>7}"
    )
    for name, rows in results.items():
        acc = np.array([scores["acc"] for scores, _, _ in rows])
        nmi = np.mean([scores["nmi"] for scores, _, _ in rows])
        ari = np.mean([scores["ari"] for scores, _, _ in rows])
        wall = np.mean([wall for _, wall, _ in rows])
        print(
            f"{name:<28} {acc.mean():8.3f} {acc.min():9.3f} {nmi:8.3f} "
            f"{ari:8.3f} {wall:7.1f}"
        )


if __name__ == "__main__":
    main()
