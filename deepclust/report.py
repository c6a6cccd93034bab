"""One self-contained HTML page that shows what a fitted model learnt.

:func:`write_report` writes the cluster galleries (one section per cluster), the
cluster sizes, a 2-D map of the embeddings, the training curves, the parameters
and the training time, and for a ContrastiveDisentangler the feature-head
galleries. Every figure is a PNG inlined as a ``data:`` URI and the page has no
script, font or style sheet from elsewhere, so it opens offline and can be
mailed as one file. Large inputs are sampled (``max_samples``) so that the page
stays small and quick to make. ``deepclust report MODEL DATA -o report.html``
and ``deepclust fit ... --report report.html`` call it.

The sample, the clusters and the inputs shown are chosen by
:mod:`deepclust.inspection`, once; each section of the page is then built by a
function of its own from the public figures of :mod:`deepclust.plotting`.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

import base64
import html
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepclust import plotting
from deepclust._files import atomic_output
from deepclust._version import __version__
from deepclust.inspection import (
    assign_clusters,
    has_own_clusters,
    head_activations,
    normalized_embeddings,
    subsample,
)

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
    shown = _inspect(estimator, X, y, n_clusters, max_samples, random_state)
    sections = [
        _sizes_section(shown),
        _clusters_section(shown, n_images, n_borderline),
        _map_section(shown, map_samples, random_state),
        _curves_section(shown),
        _heads_section(shown, n_heads, n_images),
        _confusion_section(shown),
        _parameters_section(shown),
    ]
    summary = _summary_rows(shown, fit_seconds)
    summary.append(
        (
            "report",
            f"deepclust {__version__}, made in {time.perf_counter() - start:.1f} s",
        )
    )
    page = _page(
        title or f"deepclust report: {shown.name}",
        summary,
        shown.notes,
        [section for section in sections if section is not None],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A failure part-way (a full disk) leaves the previous report whole.
    with atomic_output(path, "w", encoding="utf-8") as file:
        file.write(page)
    return path


# ---------------------------------------------------------------------------
# What is shown
# ---------------------------------------------------------------------------


@dataclass
class _Shown:
    """The sample of the inputs that the report shows, and its clusters."""

    estimator: object
    sample: object  # the sampled inputs (a list of files for a folder)
    positions: np.ndarray  # their positions in X
    n_inputs: int
    y: np.ndarray | None  # true classes of the sample
    embeddings: np.ndarray  # L2-normalised; NaN rows: unreadable
    labels: np.ndarray
    confidence: np.ndarray
    n_clusters: int
    notes: list  # how the clusters were made, in sentences

    @property
    def name(self):
        return type(self.estimator).__name__

    @property
    def image_model(self):
        return getattr(self.estimator, "input_kind_", None) == "image"

    @property
    def readable(self):
        return np.isfinite(self.embeddings).all(axis=1)

    @property
    def sampled(self):
        return len(self.positions) < self.n_inputs

    @property
    def sizes(self):
        return np.bincount(self.labels[self.labels >= 0], minlength=self.n_clusters)


def _inspect(estimator, X, y, n_clusters, max_samples, random_state):
    """Sample X, embed the sample and assign its clusters (see write_report)."""
    sample, positions, n_inputs = subsample(X, max_samples, random_state)
    if y is not None:
        y = np.asarray(y)
        if len(y) != n_inputs:
            raise ValueError(
                f"y has {len(y)} labels for {n_inputs} inputs; one per input is needed."
            )
        y = y[positions]
    embeddings = normalized_embeddings(estimator, sample)
    name = type(estimator).__name__
    if has_own_clusters(estimator):
        labels, confidence = assign_clusters(estimator, sample)
        n_clusters = estimator.n_clusters
        notes = [
            f"The clusters are {name}'s own; confidence is the top probability of "
            "predict_proba."
        ]
    else:
        notes = []
        if n_clusters is None:
            readable = np.isfinite(embeddings).all(axis=1)
            n_clusters, choice = _choose_k(embeddings[readable], random_state)
            notes.append(choice)
        labels, confidence = assign_clusters(
            estimator,
            sample,
            n_clusters=n_clusters,
            random_state=random_state,
            embeddings=embeddings,
        )
        notes.insert(
            0,
            f"{name} has no clusters of its own: its L2-normalised backbone "
            f"embeddings are clustered by KMeans into {n_clusters}; confidence is "
            "1 - d1/d2 (distances to the nearest and second nearest centres).",
        )
    return _Shown(
        estimator=estimator,
        sample=sample,
        positions=positions,
        n_inputs=n_inputs,
        y=y,
        embeddings=embeddings,
        labels=labels,
        confidence=confidence,
        n_clusters=n_clusters,
        notes=notes,
    )


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


# ---------------------------------------------------------------------------
# Sections: (anchor, link text, heading, HTML), or None when not shown
# ---------------------------------------------------------------------------


def _sizes_section(shown):
    fig = plotting.plot_cluster_sizes(
        shown.estimator, labels=shown.labels, n_clusters=shown.n_clusters
    )
    return ("sizes", "Cluster sizes", "Cluster sizes", _img(_png(fig), "cluster sizes"))


def _clusters_section(shown, n_images, n_borderline):
    intro = (
        "Each cluster's most confident samples, then its least confident ones "
        "(framed in orange); the number over an image is its confidence."
        if shown.image_model
        else "Tabular data: no images to show."
    )
    clusters = "".join(
        _cluster_html(shown, cluster, n_images, n_borderline)
        for cluster in range(shown.n_clusters)
    )
    return (
        "clusters",
        "Clusters",
        "Clusters",
        f"<p class='note'>{intro}</p>{clusters}",
    )


def _cluster_html(shown, cluster, n_images, n_borderline):
    """One cluster's section: its size, mean confidence and gallery."""
    members = shown.labels == cluster
    body = ""
    if not members.any():
        summary = "empty: no sample falls in it"
    else:
        summary = (
            f"{int(members.sum())} samples, mean confidence "
            f"{np.nanmean(shown.confidence[members]):.2f}"
        )
        if shown.image_model:
            fig = plotting.plot_cluster_gallery(
                shown.estimator,
                shown.sample,
                n_images=n_images,
                n_borderline=n_borderline,
                clusters=[cluster],
                labels=shown.labels,
                confidence=shown.confidence,
                n_clusters=shown.n_clusters,
            )
            body = _img(_png(fig), f"cluster {cluster}")
    return (
        f'<section class="cluster" id="cluster-{cluster}">'
        f"<h3>Cluster {cluster}</h3><p class='note'>{html.escape(summary)}</p>"
        f"{body}</section>"
    )


def _map_section(shown, map_samples, random_state):
    fig = plotting.plot_embedding_map(
        shown.estimator,
        shown.sample,
        labels=shown.labels,
        embeddings=shown.embeddings,
        thumbnails=shown.image_model,
        max_samples=map_samples,
        random_state=random_state,
    )
    return ("map", "Map", "Map of the embeddings", _img(_png(fig), "map"))


def _curves_section(shown):
    fig = plotting.plot_training_curves(shown.estimator)
    return ("curves", "Training", "Training curves", _img(_png(fig), "curves"))


def _heads_section(shown, n_heads, n_images):
    estimator = shown.estimator
    if has_own_clusters(estimator) or not hasattr(estimator, "n_heads"):
        return None
    activations = head_activations(estimator, shown.sample)
    body = ""
    if shown.image_model:
        fig = plotting.plot_head_gallery(
            estimator,
            shown.sample,
            n_heads=n_heads,
            n_images=n_images,
            activations=activations,
        )
        body += (
            "<p class='note'>The images on which each head is most active, for "
            "the heads whose activation varies most.</p>"
        )
        body += _img(_png(fig), "head gallery")
    fig = plotting.plot_head_histogram(estimator, activations=activations)
    body += _img(_png(fig), "head activations")
    return ("heads", "Heads", "Feature heads", body)


def _confusion_section(shown):
    if shown.y is None:
        return None
    fig = plotting.plot_confusion_matrix(
        shown.estimator, None, shown.y, labels=shown.labels, n_clusters=shown.n_clusters
    )
    return (
        "confusion",
        "Confusion",
        "Against the true classes",
        _img(_png(fig), "confusion matrix"),
    )


def _parameters_section(shown):
    params = sorted(shown.estimator.get_params().items())
    rows = _table((key, repr(value)) for key, value in params)
    return ("parameters", "Parameters", "Parameters", rows)


# ---------------------------------------------------------------------------
# Summary and page
# ---------------------------------------------------------------------------


def _summary_rows(shown, fit_seconds):
    """(name, value) rows of the summary table, the unreadable inputs last."""
    estimator = shown.estimator
    inputs = getattr(estimator, "input_kind_", "?")
    if shown.image_model:
        height, width = estimator.image_size_
        inputs += f", {height}x{width} px, {estimator.n_channels_} channel(s)"
    count = f"{shown.n_inputs}"
    if shown.sampled:
        count += f" (a random sample of {len(shown.positions)} is shown)"
    sizes = ", ".join(str(int(s)) for s in shown.sizes)
    where = " in the sample" if shown.sampled else ""
    training = _training_time(estimator)
    rows = [
        ("model", shown.name),
        ("input", inputs),
        ("inputs", count),
        ("clusters", f"{shown.n_clusters} ({sizes} samples{where})"),
        ("epochs trained", getattr(estimator, "n_epochs_", "?")),
        ("training time", f"{training:.1f} s" if training is not None else "unknown"),
    ]
    if fit_seconds is not None:
        rows.append(("fit wall time", f"{fit_seconds:.1f} s"))
    if hasattr(estimator, "cluster_sizes_"):
        training_sizes = ", ".join(str(int(s)) for s in estimator.cluster_sizes_)
        rows.append(("training cluster sizes", training_sizes))
    if not shown.readable.all():
        rows.append(("unreadable inputs", _unreadable(shown.sample, shown.readable)))
    return rows


def _unreadable(sample, readable):
    """How many inputs of the sample are unreadable and, for files, which."""
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


def _page(title, summary_rows, notes, sections):
    """The whole HTML page: title, links, summary, notes, then the sections."""
    links = [("summary", "Summary")] + [
        (anchor, link) for anchor, link, _, _ in sections
    ]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<nav>"
        + "".join(
            f'<a href="#{anchor}">{html.escape(text)}</a>' for anchor, text in links
        )
        + "</nav>",
        '<h2 id="summary">Summary</h2>',
        _table(summary_rows),
        *[f"<p class='note'>{html.escape(note)}</p>" for note in notes],
    ]
    body += [
        f'<h2 id="{anchor}">{html.escape(heading)}</h2>{content}'
        for anchor, _, heading, content in sections
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        # No request may leave the file: the policy blocks any that a later
        # edit would add by mistake.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
