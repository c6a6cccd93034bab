"""Clustering quality per CPU second on the digits, over seeds, next to peers.

Fits the estimators with their defaults (or chosen epoch budgets) once per seed and
prints one row per fit (ACC / NMI / ARI, wall and CPU seconds), then a summary per
method: mean and worst ACC, mean NMI and ARI, mean wall time. Peers run on the
same data and seeds: KMeans on the pixels, and UMAP + KMeans and UMAP + HDBSCAN
when ``umap-learn`` is installed. Everything runs offline on the bundled digits.

    python benchmarks/bench_digits.py                        # defaults, seeds 0-4
    python benchmarks/bench_digits.py --seeds 0 1 2 3 4 5 6 7 --threads 1
    python benchmarks/bench_digits.py --seeds 0 1 2 3 4 5 6 7 8 9 --threads 1 2 \
        --no-umap --heads                                    # the 20 draws

A draw is a (seed, torch thread count) pair: another thread count adds floats in
another order, so it is another draw of the same seed. With several thread counts
the summary also gives, per draw, CDC's ACC minus that of CD heads + KMeans, and
``--heads`` prints what other choices among CDC's cluster heads would have scored
(the one with the lowest loss is kept; the medoid by ARI; the best, with labels;
the ensemble of head_selection="ensemble").
    python benchmarks/bench_digits.py --epochs 20 auto --models cdc
    python benchmarks/bench_digits.py --models cdc+sl        # self-labelling stage
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import defaultdict

import numpy as np
import torch
from sklearn.cluster import HDBSCAN, KMeans

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.datasets import load_digits_images
from deepclust.metrics import clustering_scores

# Figures of the project brief for the same data on the same kind of machine.
RECORDED_PEERS = {
    "UMAP + tuned HDBSCAN (brief)": (0.952, 0.932),
    "UMAP + KMeans (brief)": (0.882, 0.905),
}


def _timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _umap_embedding(pixels, seed):
    import umap

    return umap.UMAP(n_neighbors=15, min_dist=0.0, random_state=seed).fit_transform(
        pixels
    )


def _peers(images, seed, with_umap):
    """(name, predicted labels, wall, cpu) of the classical tools."""
    pixels = images.reshape(len(images), -1).astype(np.float32)
    predicted, wall, cpu = _timed(
        lambda: KMeans(10, n_init=10, random_state=seed).fit_predict(pixels)
    )
    yield "KMeans on pixels", predicted, wall, cpu
    if not with_umap:
        return
    embedding, wall, cpu = _timed(lambda: _umap_embedding(pixels, seed))
    predicted, w, c = _timed(
        lambda: KMeans(10, n_init=10, random_state=seed).fit_predict(embedding)
    )
    yield "UMAP + KMeans", predicted, wall + w, cpu + c
    predicted, w, c = _timed(
        lambda: HDBSCAN(min_cluster_size=40, min_samples=10).fit_predict(embedding)
    )
    yield "UMAP + HDBSCAN", predicted, wall + w, cpu + c


def _fit(method, epochs, seed, images, self_label_epochs):
    """(name, predicted labels, fitted estimator) of one deepclust fit."""
    if method in ("cdc", "cdc+sl"):
        extra = {"self_label_epochs": self_label_epochs} if method == "cdc+sl" else {}
        cdc = CDCClusterer(10, max_epochs=epochs, random_state=seed, **extra)
        cdc.fit(images)
        name = "CDC" if method == "cdc" else "CDC + self-label"
        return f"{name} ({cdc.n_epochs_} ep)", cdc.labels_, cdc
    cd = ContrastiveDisentangler(max_epochs=epochs, random_state=seed).fit(images)
    predicted = KMeans(10, n_init=10, random_state=seed).fit_predict(
        cd.transform(images)
    )
    return f"CD heads + KMeans ({cd.n_epochs_} ep)", predicted, cd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs",
        nargs="+",
        default=["auto"],
        help="epoch budgets ('auto' = the estimators' default)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--self-label-epochs", type=int, default=10)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["cdc", "cd"],
        choices=["cdc", "cdc+sl", "cd"],
    )
    parser.add_argument(
        "--threads",
        nargs="+",
        type=int,
        default=[None],
        help="torch thread counts, one draw per seed and count (default: torch's)",
    )
    parser.add_argument(
        "--heads",
        action="store_true",
        help="also score other choices among CDC's cluster heads",
    )
    parser.add_argument(
        "--no-umap", action="store_true", help="skip the UMAP peers even if installed"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import umap  # noqa: F401

        with_umap = not args.no_umap
    except ImportError:
        with_umap = False
    images, labels = load_digits_images()
    print(f"threads: {args.threads}, UMAP peers: {with_umap}")
    print(
        f"{'method':<28} {'draw':>6} {'ACC':>6} {'NMI':>6} {'ARI':>6} "
        f"{'wall s':>7} {'CPU s':>7}"
    )
    results = defaultdict(list)
    by_draw = defaultdict(dict)

    def record(name, draw, predicted, wall, cpu):
        scores = clustering_scores(labels, predicted)
        results[name].append((scores["acc"], scores["nmi"], scores["ari"], wall))
        by_draw[draw][name] = scores["acc"]
        print(
            f"{name:<28} {draw:>6} {scores['acc']:6.3f} {scores['nmi']:6.3f} "
            f"{scores['ari']:6.3f} {wall:7.1f} {cpu:7.1f}",
            flush=True,
        )

    for threads in args.threads:
        if threads:
            torch.set_num_threads(threads)
        for seed in args.seeds:
            draw = f"{seed}/{torch.get_num_threads()}t"
            for name, predicted, wall, cpu in _peers(images, seed, with_umap):
                record(name, draw, predicted, wall, cpu)
            for budget in args.epochs:
                epochs = budget if budget == "auto" else int(budget)
                for method in args.models:
                    (name, predicted, model), wall, cpu = _timed(
                        _fit, method, epochs, seed, images, args.self_label_epochs
                    )
                    record(name, draw, predicted, wall, cpu)
                    if args.heads and isinstance(model, CDCClusterer):
                        for choice, chosen in _head_choices(model, images, labels):
                            record(choice, draw, chosen, wall, cpu)

    print(f"\nsummary over seeds {' '.join(map(str, args.seeds))}")
    print(
        f"{'method':<28} {'mean ACC':>8} {'worst ACC':>9} {'mean NMI':>8} "
        f"{'mean ARI':>8} {'wall s':>7}"
    )
    for name, rows in results.items():
        acc, nmi, ari, wall = np.array(rows).T
        print(
            f"{name:<28} {acc.mean():8.3f} {acc.min():9.3f} {nmi.mean():8.3f} "
            f"{ari.mean():8.3f} {wall.mean():7.1f}"
        )
    for name, (acc, nmi) in RECORDED_PEERS.items():
        print(f"{name:<28} {acc:8.3f} {'':>9} {nmi:8.3f}")
    _gaps(by_draw)


def _gaps(by_draw):
    """CDC's ACC minus that of CD heads + KMeans, draw by draw."""
    gaps = []
    for draw, scores in by_draw.items():
        cdc = [acc for name, acc in scores.items() if name.startswith("CDC (")]
        cd = [acc for name, acc in scores.items() if name.startswith("CD heads")]
        if cdc and cd:
            gaps.append((cdc[0] - cd[0], draw))
    if gaps:
        worst, draw = min(gaps)
        mean = np.mean([gap for gap, _ in gaps])
        print(
            f"\nCDC - CD heads + KMeans, ACC per draw: mean {mean:+.3f}, worst "
            f"{worst:+.3f} (draw {draw})"
        )


def _head_choices(cdc, images, labels):
    """Labels of other choices among the cluster heads of a fitted CDC."""
    from sklearn.metrics import adjusted_rand_score

    k, heads = cdc.n_clusters, cdc.n_cluster_heads
    projections = cdc._outputs(images, "all_projections")[0]
    head_labels = [projections[:, h * k : (h + 1) * k].argmax(axis=1)
                   for h in range(heads)]  # fmt: skip
    agreement = np.array(
        [[adjusted_rand_score(a, b) for b in head_labels] for a in head_labels]
    )
    yield "  head: medoid by ARI", head_labels[int(agreement.sum(axis=1).argmax())]
    best = max(head_labels, key=lambda h: clustering_scores(labels, h)["acc"])
    yield "  head: best (oracle)", best
    if cdc.head_selection != "ensemble":
        # What head_selection="ensemble" would have kept: the same training,
        # then the kept head refitted to the heads' joint partition (last: it
        # changes the model).
        source = cdc._model_input(cdc._read_predict_input(images))
        projections, embedding = cdc.net_.outputs(
            source, ["all_projections", "embedding"], cdc.predict_batch_size
        )
        cdc._refit_to_heads_ensemble(projections, embedding)
        cdc._fill_empty_clusters(source)
        yield "  heads: ensemble", cdc.predict(images)


if __name__ == "__main__":
    main()
