"""Which k does select_n_clusters choose on data whose number of groups is known?

For each data set it prints the per-k stability table, the reasoning and the chosen
k (the last line of each block, ``best k: N``), with the wall time, then a summary:

- ``digits``: scikit-learn's 1797 digits (10 classes), a ContrastiveDisentangler
  trained once with its defaults (what ``deepclust select-k`` does);
- ``mix``: the digits of a few classes only (default 0-4, so k=5), same procedure;
- ``blobs``: Gaussian blobs in 16-D (default 6 centres), clustered as given
  (``model="precomputed"``);
- ``blobs-cd``: the same blobs through a ContrastiveDisentangler (an MLP), to check
  the train-once path on tabular data.

    python benchmarks/bench_select_k.py                          # everything, seed 0
    python benchmarks/bench_select_k.py --datasets digits --seeds 0 1 2
    python benchmarks/bench_select_k.py --mix-classes 1 3 5 7 --blob-centers 8
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import make_blobs

from deepclust.datasets import load_digits_images
from deepclust.model_selection import select_n_clusters

DATASETS = ("digits", "mix", "blobs", "blobs-cd")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=list(DATASETS)
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="seeds of the model training and of the subsamples",
    )
    parser.add_argument("--k-min", type=int, default=2)
    parser.add_argument("--k-max", type=int, default=15)
    parser.add_argument(
        "--mix-classes",
        nargs="+",
        type=int,
        default=[0, 1, 2, 3, 4],
        help="digit classes of the 'mix' data set",
    )
    parser.add_argument("--blob-centers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    images, labels = load_digits_images()
    mix = np.isin(labels, args.mix_classes)
    blobs, _ = make_blobs(
        n_samples=1500,
        n_features=16,
        centers=args.blob_centers,
        cluster_std=2.0,
        random_state=0,
    )
    data = {
        "digits": (images, 10, {}),
        "mix": (images[mix], len(args.mix_classes), {}),
        "blobs": (blobs, args.blob_centers, {"model": "precomputed"}),
        "blobs-cd": (blobs.astype(np.float32), args.blob_centers, {}),
    }
    k_range = range(args.k_min, args.k_max + 1)
    summary = []
    for name in args.datasets:
        X, true_k, options = data[name]
        for seed in args.seeds:
            print(
                f"== {name} ({len(X)} samples, {true_k} groups), seed {seed}",
                flush=True,
            )
            start = time.perf_counter()
            result = select_n_clusters(X, k_range, random_state=seed, **options)
            seconds = time.perf_counter() - start
            print(result.format())
            print(
                f"time: {seconds:.1f} s (training {result.fit_seconds or 0:.1f} s)\n",
                flush=True,
            )
            summary.append((name, seed, true_k, result.n_clusters, seconds))
    print(f"{'data':<10} {'seed':>4} {'true k':>6} {'chosen':>6} {'time':>8}")
    for name, seed, true_k, chosen, seconds in summary:
        print(f"{name:<10} {seed:>4} {true_k:>6} {chosen:>6} {seconds:7.1f}s")


if __name__ == "__main__":
    main()
