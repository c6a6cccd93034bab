"""The ``deepclust`` command line: demo, fit, export and predict.

``deepclust demo`` trains both estimators on scikit-learn's bundled digits (no
network) and prints their clustering scores next to KMeans on raw pixels.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np


def _demo(args) -> int:
    from sklearn.cluster import KMeans

    from deepclust import CDCClusterer, ContrastiveDisentangler
    from deepclust.datasets import load_digits_images
    from deepclust.metrics import clustering_scores

    images, labels = load_digits_images()
    print(f"digits: {images.shape[0]} images of {images.shape[1]}x{images.shape[2]} px, "
          f"10 classes (labels used for scoring only)")
    rows = []
    start = time.perf_counter()
    pixels = images.reshape(len(images), -1).astype(np.float32)
    predicted = KMeans(10, n_init=10, random_state=args.seed).fit_predict(pixels)
    rows.append(("KMeans on pixels", clustering_scores(labels, predicted), time.perf_counter() - start))

    if args.model in ("cd", "both"):
        print("training ContrastiveDisentangler (CD) ...")
        start = time.perf_counter()
        cd = ContrastiveDisentangler(max_epochs=args.epochs or "auto", verbose=1,
                                     random_state=args.seed).fit(images)
        heads = cd.transform(images)
        predicted = KMeans(10, n_init=10, random_state=args.seed).fit_predict(heads)
        rows.append(("CD heads + KMeans", clustering_scores(labels, predicted),
                     time.perf_counter() - start))
    if args.model in ("cdc", "both"):
        print("training CDCClusterer (CDC) ...")
        start = time.perf_counter()
        cdc = CDCClusterer(n_clusters=10, max_epochs=args.epochs or "auto", verbose=1,
                           random_state=args.seed).fit(images)
        rows.append(("CDCClusterer", clustering_scores(labels, cdc.labels_),
                     time.perf_counter() - start))

    print()
    print(f"{'method':<20} {'ACC':>6} {'NMI':>6} {'ARI':>6} {'time':>8}")
    for name, scores, seconds in rows:
        print(f"{name:<20} {scores['acc']:6.3f} {scores['nmi']:6.3f} {scores['ari']:6.3f} "
              f"{seconds:7.1f}s")
    return 0


def _load_data(path: str):
    """A .npy array, or a folder/image path passed through as is."""
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    return path


def _fit(args) -> int:
    import joblib

    from deepclust import CDCClusterer, ContrastiveDisentangler

    params = {"max_epochs": args.epochs or "auto", "verbose": 1, "random_state": args.seed,
              "image_size": args.image_size or "auto", "on_error": args.on_error}
    if args.model == "cdc":
        estimator = CDCClusterer(n_clusters=args.n_clusters, **params)
    else:
        estimator = ContrastiveDisentangler(**params)
    estimator.fit(_load_data(args.data))
    joblib.dump(estimator, args.output)
    print(f"saved {type(estimator).__name__} to {args.output}")
    if args.model == "cdc":
        print(f"cluster sizes: {estimator.cluster_sizes_.tolist()}")
    return 0


def _export(args) -> int:
    import joblib

    from deepclust.onnx import export_onnx

    estimator = joblib.load(args.model)
    export_onnx(estimator, args.output, input_format=args.input_format)
    print(f"exported {type(estimator).__name__} to {args.output}")
    return 0


def _predict(args) -> int:
    from deepclust._inputs import image_files_in
    from deepclust.onnx import OnnxClusterer

    model = OnnxClusterer(args.model)
    data = _load_data(args.data)
    if isinstance(data, np.ndarray):
        names = [f"{args.data}[{i}]" for i in range(len(data))]
    elif Path(data).is_dir():
        names = image_files_in(data)
    else:
        names = [data]
    if model.n_clusters:
        probabilities = model.predict_proba(data)
        labels = probabilities.argmax(axis=1)
        rows = [(n, int(l), float(p[l])) for n, l, p in zip(names, labels, probabilities)]
        header = ("file", "label", "probability")
    else:
        heads = model.transform(data)
        rows = [(n, *map(float, h)) for n, h in zip(names, heads)]
        header = ("file", *[f"head_{i}" for i in range(heads.shape[1])])
    out = open(args.csv, "w", newline="") if args.csv else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    finally:
        if args.csv:
            out.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``deepclust`` command."""
    parser = argparse.ArgumentParser(prog="deepclust", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train CD and CDC on the bundled digits and score them")
    demo.add_argument("--model", choices=["cd", "cdc", "both"], default="both")
    demo.add_argument("--epochs", type=int, default=None, help="default: auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    fit = commands.add_parser("fit", help="train on a folder of images or a .npy array and save the model")
    fit.add_argument("data", help="folder of images, image file or .npy array")
    fit.add_argument("--model", choices=["cdc", "cd"], default="cdc")
    fit.add_argument("--n-clusters", type=int, default=10)
    fit.add_argument("--epochs", type=int, default=None, help="default: auto")
    fit.add_argument("--image-size", type=int, default=None, help="resize images to this size")
    fit.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                     help="what to do with unreadable image files")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("-o", "--output", default="deepclust-model.joblib")
    fit.set_defaults(run=_fit)

    export = commands.add_parser("export", help="export a saved model to ONNX")
    export.add_argument("model", help="model saved by 'deepclust fit'")
    export.add_argument("output", help="path of the .onnx file to write")
    export.add_argument("--input-format", choices=["auto", "uint8_nhwc", "float_nchw"],
                        default="auto", help="auto: uint8 NHWC for images, float rows for tabular models")
    export.set_defaults(run=_export)

    predict = commands.add_parser("predict", help="cluster images with an exported ONNX model")
    predict.add_argument("model", help=".onnx file written by 'deepclust export'")
    predict.add_argument("data", help="folder of images, image file or .npy array")
    predict.add_argument("--csv", help="write the results to this CSV file instead of stdout")
    predict.set_defaults(run=_predict)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``deepclust`` console script."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
