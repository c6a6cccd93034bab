"""One self-contained HTML page that shows what a fitted model learnt.

:func:`write_report` writes the cluster galleries (one section per cluster), the
cluster sizes, a 2-D map of the embeddings, the training curves, the parameters
and the training time, and for a ContrastiveDisentangler the feature-head
galleries. Every figure is a PNG inlined as a ``data:`` URI and the page has no
script, font or style sheet from elsewhere, so it opens offline and can be
mailed as one file. Large inputs are sampled (``max_samples``) so that the page
stays small and quick to make. ``deepclust report MODEL DATA -o report.html``
and ``deepclust fit ... --report report.html`` call it.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

import base64
import html
import io
import time
from pathlib import Path

import numpy as np

from deepclust import plotting
from deepclust._version import __version__

__all__ = ["write_report"]

_DPI = 72
_MAX_LISTED_UNREADABLE = 20
_STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; }
th { vertical-align: top; }
img { max-width: 100%; height: auto; }
section.cluster { margin-bottom: 1em; }
.note { color: #555; font-size: .9em; }
nav a { margin-right: .8em; }
"""


def _png(fig):
    """The figure as a PNG data URI (and the figure released)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(
        "ascii"
    )


def _img(uri, alt):
    return f'<div class="figure"><img src="{uri}" alt="{html.escape(alt)}"></div>'


def _table(rows):
    cells = "".join(
        f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(str(value))}</td></tr>"
        for name, value in rows
    )
    return f"<table>{cells}</table>"


def _training_time(estimator):
    history = getattr(estimator, "history_", None)
    if history is None:
        return None
    return float(sum(float(epoch.get("dur", 0.0)) for epoch in history))


def write_report(
    estimator,
    X,
    path,
    *,
    y=None,
    n_clusters=None,
    max_samples=2000,
    map_samples=1000,
    n_images=8,
    n_borderline=4,
    n_heads=8,
    fit_seconds=None,
    title=None,
    random_state=0,
):
    """Write a self-contained HTML report of a fitted estimator on X.

    Parameters
    ----------
    estimator : CDCClusterer or ContrastiveDisentangler
        A fitted estimator.
    X : array-like, list of PIL images or paths, or a directory path
        The data to show, in any form the estimator accepts (usually the
        training data).
    path : str or path-like
        The HTML file to write.
    y : array-like of shape (n_inputs,), default=None
        True classes, if known: the report then adds the confusion matrix after
        Hungarian matching and ACC/NMI/ARI.
    n_clusters : int, default=None
        ContrastiveDisentangler only: the number of KMeans clusters of its
        embeddings. None chooses it by stability
        (:func:`deepclust.model_selection.select_n_clusters` on the sample's
        embeddings, no training).
    max_samples : int, default=2000
        At most this many inputs, drawn at random, are predicted and shown.
    map_samples : int, default=1000
        At most this many of them are placed on the 2-D map.
    n_images : int, default=8
        Most confident images per cluster (and top images per head).
    n_borderline : int, default=4
        Least confident images per cluster.
    n_heads : int, default=8
        Feature heads shown for a ContrastiveDisentangler.
    fit_seconds : float, default=None
        Wall time of the fit, when the caller measured it.
    title : str, default=None
        Page title; None names the model.
    random_state : int, default=0
        Seed of the sampling, KMeans and the map.

    Returns
    -------
    path : pathlib.Path
        The written file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from deepclust import CDCClusterer
    >>> from deepclust.datasets import make_shape_images
    >>> from deepclust.report import write_report
    >>> images, _ = make_shape_images(24, image_size=8, random_state=0)
    >>> cdc = CDCClusterer(n_clusters=3, max_epochs=1, batch_size=12,
    ...                    random_state=0).fit(images)
    >>> out = write_report(cdc, images, pathlib.Path(tempfile.mkdtemp()) / "r.html")
    >>> out.read_text().count('<section class="cluster"')
    3
    """
    start = time.perf_counter()
    path = Path(path)
    name = type(estimator).__name__
    image_model = getattr(estimator, "input_kind_", None) == "image"
    is_clusterer = hasattr(estimator, "predict_proba")
    n_inputs = plotting._n_inputs(X)
    rng = np.random.default_rng(random_state)
    positions = np.arange(n_inputs)
    if n_inputs > max_samples:
        positions = np.sort(rng.choice(n_inputs, max_samples, replace=False))
    # A folder becomes its list of files, so that unreadable ones can be named.
    sample = plotting._take(X, positions)
    if y is not None:
        y = np.asarray(y)
        if len(y) != n_inputs:
            raise ValueError(
                f"y has {len(y)} labels for {n_inputs} inputs; one per input is needed."
            )
        y = y[positions]

    embeddings = plotting._embeddings(estimator, sample)
    readable = np.isfinite(embeddings).all(axis=1)
    notes = []
    if is_clusterer:
        labels, confidence = plotting.assign_clusters(estimator, sample)
        k = estimator.n_clusters
        how = (
            f"The clusters are {name}'s own; confidence is the top probability of "
            "predict_proba"
        )
    else:
        if n_clusters is None:
            n_clusters, choice = _choose_k(embeddings[readable], random_state)
            notes.append(choice)
        labels, confidence = plotting._kmeans_clusters(
            embeddings, n_clusters, random_state
        )
        k = n_clusters
        how = (
            f"{name} has no clusters of its own: its L2-normalised backbone "
            f"embeddings are clustered by KMeans into {k}; confidence is 1 - d1/d2 "
            "(distances to the nearest and second nearest centres)"
        )

    parts = [f"<p class='note'>{html.escape(how)}.</p>"]
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in notes]
    nav = [("summary", "Summary"), ("sizes", "Cluster sizes")]

    sizes = np.bincount(labels[labels >= 0], minlength=k)
    sections = []
    sections.append(
        (
            "sizes",
            "Cluster sizes",
            _img(
                _png(
                    plotting.plot_cluster_sizes(estimator, labels=labels, n_clusters=k)
                ),
                "cluster sizes",
            ),
        )
    )
    nav.append(("clusters", "Clusters"))
    clusters_html = []
    for cluster in range(k):
        members = labels == cluster
        body = ""
        if not members.any():
            summary = "empty: no sample falls in it"
        else:
            summary = (
                f"{int(sizes[cluster])} samples, mean confidence "
                f"{np.nanmean(confidence[members]):.2f}"
            )
            if image_model:
                fig = plotting.plot_cluster_gallery(
                    estimator,
                    sample,
                    n_images=n_images,
                    n_borderline=n_borderline,
                    clusters=[cluster],
                    labels=labels,
                    confidence=confidence,
                    n_clusters=k,
                )
                body = _img(_png(fig), f"cluster {cluster}")
        clusters_html.append(
            f'<section class="cluster" id="cluster-{cluster}">'
            f"<h3>Cluster {cluster}</h3><p class='note'>{html.escape(summary)}</p>"
            f"{body}</section>"
        )
    intro = (
        "Each cluster's most confident samples, then its least confident ones "
        "(framed in orange); the number over an image is its confidence."
        if image_model
        else "Tabular data: no images to show."
    )
    sections.append(
        (
            "clusters",
            "Clusters",
            f"<p class='note'>{intro}</p>" + "".join(clusters_html),
        )
    )
    map_fig = plotting.plot_embedding_map(
        estimator,
        sample,
        labels=labels,
        embeddings=embeddings,
        thumbnails=image_model,
        max_samples=map_samples,
        random_state=random_state,
    )
    sections.append(("map", "Map of the embeddings", _img(_png(map_fig), "map")))
    nav.append(("map", "Map"))
    sections.append(
        (
            "curves",
            "Training curves",
            _img(_png(plotting.plot_training_curves(estimator)), "curves"),
        )
    )
    nav.append(("curves", "Training"))
    if not is_clusterer and hasattr(estimator, "n_heads"):
        activations = plotting._head_activations(estimator, sample)
        body = ""
        if image_model:
            body += (
                "<p class='note'>The images on which each head is most active, for "
                "the heads whose activation varies most.</p>"
            )
            body += _img(
                _png(
                    plotting.plot_head_gallery(
                        estimator,
                        sample,
                        n_heads=n_heads,
                        n_images=n_images,
                        activations=activations,
                    )
                ),
                "head gallery",
            )
        body += _img(
            _png(plotting.plot_head_histogram(estimator, activations=activations)),
            "head activations",
        )
        sections.append(("heads", "Feature heads", body))
        nav.append(("heads", "Heads"))
    if y is not None:
        sections.append(
            (
                "confusion",
                "Against the true classes",
                _img(
                    _png(
                        plotting.plot_confusion_matrix(
                            estimator, None, y, labels=labels, n_clusters=k
                        )
                    ),
                    "confusion matrix",
                ),
            )
        )
        nav.append(("confusion", "Confusion"))
    params = estimator.get_params()
    sections.append(
        (
            "parameters",
            "Parameters",
            _table((key, repr(value)) for key, value in sorted(params.items())),
        )
    )
    nav.append(("parameters", "Parameters"))

    unreadable = int((~readable).sum())
    training = _training_time(estimator)
    summary_rows = [
        ("model", name),
        (
            "input",
            getattr(estimator, "input_kind_", "?")
            + (
                f", {estimator.image_size_[0]}x{estimator.image_size_[1]} px, "
                f"{estimator.n_channels_} channel(s)"
                if image_model
                else ""
            ),
        ),
        (
            "inputs",
            f"{n_inputs}"
            + (
                f" (a random sample of {len(positions)} is shown)"
                if len(positions) < n_inputs
                else ""
            ),
        ),
        (
            "clusters",
            f"{k} ({', '.join(str(int(s)) for s in sizes)} samples"
            + (" in the sample" if len(positions) < n_inputs else "")
            + ")",
        ),
        ("epochs trained", getattr(estimator, "n_epochs_", "?")),
        ("training time", f"{training:.1f} s" if training is not None else "unknown"),
    ]
    if fit_seconds is not None:
        summary_rows.append(("fit wall time", f"{fit_seconds:.1f} s"))
    if hasattr(estimator, "cluster_sizes_"):
        summary_rows.append(
            (
                "training cluster sizes",
                ", ".join(str(int(s)) for s in estimator.cluster_sizes_),
            )
        )
    if unreadable:
        summary_rows.append(("unreadable inputs", _unreadable(X, sample, readable)))
    summary_rows.append(
        (
            "report",
            f"deepclust {__version__}, made in {time.perf_counter() - start:.1f} s",
        )
    )

    page_title = title or f"deepclust report: {name}"
    body = [
        f"<h1>{html.escape(page_title)}</h1>",
        "<nav>"
        + "".join(
            f'<a href="#{anchor}">{html.escape(text)}</a>' for anchor, text in nav
        )
        + "</nav>",
        '<h2 id="summary">Summary</h2>',
        _table(summary_rows),
        *parts,
    ]
    body += [
        f'<h2 id="{anchor}">{html.escape(heading)}</h2>{content}'
        for anchor, heading, content in sections
    ]
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        # No request may leave the file: the policy blocks any that a later
        # edit would add by mistake.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{html.escape(page_title)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _choose_k(embeddings, random_state):
    """n_clusters for a ContrastiveDisentangler's report, by stability, and why."""
    from deepclust.model_selection import select_n_clusters

    n = len(embeddings)
    k_max = int(min(15, max(3, 0.5 * n // 5)))
    if n < 10:
        return 2, "Only a few readable inputs: 2 clusters are shown."
    # Fewer resamples than select-k's default: the report only needs a
    # reasonable k, and 'deepclust select-k' gives the full table.
    result = select_n_clusters(
        embeddings,
        range(2, k_max + 1),
        model="precomputed",
        n_resamples=6,
        random_state=random_state,
    )
    return result.n_clusters, (
        f"The number of clusters, {result.n_clusters}, was chosen by the stability "
        f"of KMeans on the embeddings (k from 2 to {k_max}; 'deepclust select-k' "
        "shows the table; pass n_clusters to choose it yourself)."
    )


def _unreadable(X, sample, readable):
    files = None
    if isinstance(sample, (list, tuple)) and all(isinstance(s, str) for s in sample):
        files = sample
    positions = np.flatnonzero(~readable)
    text = f"{len(positions)} in the sample"
    if files is not None:
        listed = [files[i] for i in positions[:_MAX_LISTED_UNREADABLE]]
        text += ": " + ", ".join(listed)
        if len(positions) > _MAX_LISTED_UNREADABLE:
            text += ", ..."
    return text
