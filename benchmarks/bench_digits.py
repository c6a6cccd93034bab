"""Clustering quality and wall time on scikit-learn's digits for several epoch budgets.

Prints ACC / NMI / ARI of CDCClusterer (with and without self-labelling), of KMeans on
ContrastiveDisentangler head activations, and of KMeans on raw pixels, next to the
wall time of each fit. Everything runs offline on the bundled digits.

    python benchmarks/bench_digits.py                      # default budgets
    python benchmarks/bench_digits.py --epochs 20 40 auto  # chosen budgets
    python benchmarks/bench_digits.py --seeds 0 1 2        # spread over seeds
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.cluster import KMeans

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.datasets import load_digits_images
from deepclust.metrics import clustering_scores


def _row(name, budget, seed, scores, seconds):
    print(
        f"{name:<22} {budget!s:>6} {seed:>4} {scores['acc']:6.3f} {scores['nmi']:6.3f} "
        f"{scores['ari']:6.3f} {seconds:8.1f}s",
        flush=True,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs",
        nargs="+",
        default=["auto", "20", "60"],
        help="epoch budgets ('auto' = the estimators' default)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--self-label-epochs", type=int, default=10)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["cdc", "cdc+sl", "cd"],
        choices=["cdc", "cdc+sl", "cd"],
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    images, labels = load_digits_images()

    print(
        f"{'method':<22} {'epochs':>6} {'seed':>4} {'ACC':>6} {'NMI':>6} {'ARI':>6} "
        f"{'time':>9}"
    )
    for seed in args.seeds:
        start = time.perf_counter()
        pixels = images.reshape(len(images), -1).astype(np.float32)
        predicted = KMeans(10, n_init=10, random_state=seed).fit_predict(pixels)
        _row(
            "KMeans on pixels",
            "-",
            seed,
            clustering_scores(labels, predicted),
            time.perf_counter() - start,
        )
        for budget in args.epochs:
            epochs = budget if budget == "auto" else int(budget)
            if "cdc" in args.models:
                start = time.perf_counter()
                cdc = CDCClusterer(10, max_epochs=epochs, random_state=seed).fit(images)
                _row(
                    f"CDC ({cdc.n_epochs_} ep)",
                    budget,
                    seed,
                    clustering_scores(labels, cdc.labels_),
                    time.perf_counter() - start,
                )
            if "cdc+sl" in args.models:
                start = time.perf_counter()
                cdc = CDCClusterer(
                    10,
                    max_epochs=epochs,
                    self_label_epochs=args.self_label_epochs,
                    random_state=seed,
                ).fit(images)
                _row(
                    f"CDC+self-label ({cdc.n_epochs_})",
                    budget,
                    seed,
                    clustering_scores(labels, cdc.labels_),
                    time.perf_counter() - start,
                )
            if "cd" in args.models:
                start = time.perf_counter()
                cd = ContrastiveDisentangler(max_epochs=epochs, random_state=seed).fit(
                    images
                )
                predicted = KMeans(10, n_init=10, random_state=seed).fit_predict(
                    cd.transform(images)
                )
                _row(
                    f"CD heads+KMeans ({cd.n_epochs_})",
                    budget,
                    seed,
                    clustering_scores(labels, predicted),
                    time.perf_counter() - start,
                )


if __name__ == "__main__":
    main()
