"""Choosing the number of clusters without labels: stability of KMeans on features.

A loss, or an estimator's ``score``, changes scale with the number of clusters k,
so it cannot compare k. :func:`select_n_clusters` uses a criterion that can:
the *stability* of the clustering under resampling (Ben-Hur, Elisseeff & Guyon
2002; Lange, Roth, Braun & Buhmann 2004). Its features come from one trained
model (by default a :class:`~deepclust.ContrastiveDisentangler`, which needs no
k), so every k costs a few KMeans fits rather than a training.

How it decides, for each candidate k:

1. draw ``n_resamples`` pairs of random subsamples (``subsample`` of the
   samples each; the same pairs for every k, so that the k are compared on the
   same draws);
2. fit KMeans with k clusters on each subsample of a pair, let both assign
   every sample to its nearest centre, and compare the two labelings with the
   adjusted Rand index (ARI: 1 for the same partition, 0 for chance, whatever k);
3. the stability of k is the mean ARI over the pairs.

A k that matches the structure of the data gives the same partition whatever
the subsample; too many clusters cut real groups at arbitrary places and too
few merge them in arbitrary ways, and both vary from draw to draw. Well
separated groups can also merge stably (three groups of a 4-group hierarchy,
say), so among the k whose stability is within ``tolerance`` of the best, the
largest is chosen: the finest partition that is as stable as any.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

import time
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

from deepclust.inspection import sample_positions

__all__ = ["KSelection", "select_n_clusters"]

# Below this best stability, no k gives a reproducible clustering.
_LOW_STABILITY = 0.75
# Fewer samples per cluster than this make the KMeans fits of a subsample noisy.
_FEW_PER_CLUSTER = 20
_FEATURES = ("embedding", "transform")


@dataclass
class KSelection:
    """Result of :func:`select_n_clusters`: the stability of every k and the choice.

    Attributes
    ----------
    n_clusters : int
        The chosen number of clusters.
    k_values : ndarray of shape (n_k,)
        The candidate numbers of clusters, in increasing order.
    scores : ndarray of shape (n_k, n_resamples)
        ARI between the two clusterings of each pair of subsamples, per k.
    tolerance : float
        Stabilities within this much of the best count as equally good.
    features : str
        What was clustered, in words.
    n_samples : int
        Number of samples clustered (after ``max_samples``).
    n_inputs : int
        Number of inputs given (unreadable ones included).
    model : estimator or None
        The model whose features were clustered (trained here when it was not
        fitted), so that it can be reused; None for precomputed features.
    fit_seconds : float or None
        Training time of the model when it was trained here.
    notes : list of str
        Reasons not to trust the choice, if any.
    """

    n_clusters: int
    k_values: np.ndarray
    scores: np.ndarray
    tolerance: float
    features: str
    n_samples: int
    n_inputs: int
    model: object = None
    fit_seconds: float | None = None
    notes: list = field(default_factory=list)

    @property
    def stability(self):
        """Mean ARI over the pairs of subsamples, per k (ndarray of shape (n_k,))."""
        return self.scores.mean(axis=1)

    @property
    def stability_std(self):
        """Standard deviation of the ARI over the pairs, per k."""
        return self.scores.std(axis=1)

    @property
    def best_stability_k(self):
        """The k of highest stability (the choice before the tolerance rule)."""
        return int(self.k_values[np.argmax(self.stability)])

    def table(self):
        """One dict per k: ``k``, ``stability``, ``std``, ``min`` and ``chosen``.

        Returns
        -------
        rows : list of dict
        """
        return [
            {
                "k": int(k),
                "stability": float(mean),
                "std": float(std),
                "min": float(low),
                "chosen": int(k) == self.n_clusters,
            }
            for k, mean, std, low in zip(
                self.k_values,
                self.stability,
                self.stability_std,
                self.scores.min(axis=1),
                strict=True,
            )
        ]

    def reasoning(self):
        """How the choice was made, in a few sentences (str)."""
        stability = dict(
            zip(self.k_values.tolist(), self.stability.tolist(), strict=True)
        )
        best = self.best_stability_k
        chosen = self.n_clusters
        text = f"k={best} has the highest stability ({stability[best]:.3f})"
        if chosen == best:
            text += f"; no larger k comes within {self.tolerance:g} of it."
            others = [k for k in stability if k != chosen]
            if others:
                runner_up = max(others, key=stability.get)
                text += f" Runner-up: k={runner_up} ({stability[runner_up]:.3f})."
            return text
        text += (
            f"; k={chosen} ({stability[chosen]:.3f}) is within {self.tolerance:g} "
            "of it and is the largest such k: well separated groups also merge "
            "into fewer groups stably, so among equally stable k the finest "
            "partition is kept."
        )
        return text

    def format(self):
        """The per-k table, the criterion, the reasoning and a last line ``best k: N``.

        Returns
        -------
        text : str
        """
        n_resamples = self.scores.shape[1]
        lines = [
            f"features: {self.features}",
            f"samples clustered: {self.n_samples}"
            + (
                f" of {self.n_inputs} inputs" if self.n_inputs != self.n_samples else ""
            ),
            "criterion: stability = mean adjusted Rand index between the KMeans "
            f"clusterings of {n_resamples} pairs of random subsamples, each "
            "clustering assigning every sample to its nearest centre (1: the same "
            "partition every time; 0: chance)",
            f"{'k':>3}  {'stability':>9}  {'std':>6}  {'min':>6}",
        ]
        for row in self.table():
            marker = "  <- chosen" if row["chosen"] else ""
            lines.append(
                f"{row['k']:>3}  {row['stability']:>9.3f}  {row['std']:>6.3f}  "
                f"{row['min']:>6.3f}{marker}"
            )
        lines.append("decision: " + self.reasoning())
        lines.extend(f"caution: {note}" for note in self.notes)
        lines.append(f"best k: {self.n_clusters}")
        return "\n".join(lines)

    def __str__(self):
        return self.format()

    def plot(self, ax=None):
        """Plot the stability against k (:func:`deepclust.plotting.plot_k_selection`).

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; None makes a new figure.

        Returns
        -------
        fig : matplotlib Figure
        """
        from deepclust.plotting import plot_k_selection

        return plot_k_selection(self, ax=ax)


def select_n_clusters(
    X,
    k_range=range(2, 16),
    *,
    model=None,
    features="embedding",
    n_resamples=12,
    subsample=0.5,
    tolerance=0.02,
    n_init=3,
    max_samples=5000,
    random_state=0,
    verbose=0,
):
    """Choose the number of clusters by the stability of KMeans on learnt features.

    A model is trained once (or a fitted one is reused), its features of ``X``
    are L2-normalised (contrastive features are compared by cosine), and each
    candidate k is scored by its stability: the mean adjusted Rand index between
    KMeans clusterings of pairs of random subsamples (see the module docstring).
    The chosen k is the largest whose stability is within ``tolerance`` of the
    best.

    The choice cannot be trusted when every k is unstable (best stability below
    0.75: the features show no clear groups), when it is an end of ``k_range``,
    when clusters hold fewer than about 20 samples, when classes look alike in
    the features (e.g. digits 3/5/8 in a short training: they merge into one
    stable group), or when group sizes differ widely (KMeans splits large groups
    and absorbs small ones). The result lists these cautions in ``notes``.

    Parameters
    ----------
    X : array-like, list of PIL images or paths, or a directory path
        Data in any form the estimators accept; with ``model="precomputed"``, a
        2-D array of features.
    k_range : iterable of int, default=range(2, 16)
        Candidate numbers of clusters, each at least 2.
    model : None, "precomputed" or estimator, default=None
        Where the features come from. None trains a
        ``ContrastiveDisentangler(random_state=random_state)`` on ``X``. A fitted
        estimator is used as it is; an unfitted one is cloned and trained on
        ``X``. "precomputed": ``X`` holds the features, used without
        normalisation.
    features : {"embedding", "transform"}, default="embedding"
        Which output of the model to cluster: the backbone embeddings (``embed``)
        or ``transform`` (head activations for a ContrastiveDisentangler).
    n_resamples : int, default=12
        Pairs of subsamples per k.
    subsample : float, default=0.5
        Fraction of the samples in each subsample, in (0, 1). Halves (as Lange
        et al.) perturb enough that look-alike groups merged at one k do not
        look stable: on the digits, 0.8 made k=8 the most stable on one
        training of three, 0.5 chose 10 on all three.
    tolerance : float, default=0.02
        Stabilities within this much of the best count as equally good.
    n_init : int, default=3
        KMeans initialisations per fit (the best is kept).
    max_samples : int, default=5000
        At most this many samples (drawn at random) are clustered; the model is
        still trained on all of ``X``.
    random_state : int, default=0
        Seed of the model, the subsamples and KMeans.
    verbose : int, default=0
        Verbosity of the model's training.

    Returns
    -------
    result : KSelection
        ``result.n_clusters`` is the chosen k; ``print(result)`` shows the
        per-k table and the reasoning; ``result.plot()`` draws the stability.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust.model_selection import select_n_clusters
    >>> X, _ = make_blobs(n_samples=300, centers=4, random_state=0)
    >>> result = select_n_clusters(X, range(2, 8), model="precomputed",
    ...                            n_resamples=4)
    >>> result.n_clusters
    4
    >>> print(result.format().splitlines()[-1])
    best k: 4
    """
    k_values = _check_k_range(k_range)
    _check_options(features, n_resamples, subsample, tolerance, n_init, max_samples)
    values, description, fitted, fit_seconds = _features(
        X, model, features, random_state, verbose
    )
    rng = np.random.default_rng(random_state)
    # Unreadable image files (on_error="skip") come back as NaN rows.
    readable = values[np.isfinite(values).all(axis=1)]
    sample = readable[sample_positions(len(readable), max_samples, rng)]
    n_fit = _subsample_size(k_values, subsample, len(sample))
    scores = _stability_scores(sample, k_values, n_resamples, n_fit, n_init, rng)
    result = KSelection(
        n_clusters=_largest_stable_k(k_values, scores, tolerance),
        k_values=k_values,
        scores=scores,
        tolerance=float(tolerance),
        features=description,
        n_samples=len(sample),
        n_inputs=len(values),
        model=fitted,
        fit_seconds=fit_seconds,
    )
    result.notes = _cautions(result)
    return result


def _subsample_size(k_values, subsample, n_samples):
    """Samples in each subsample; raise when too few for the largest k."""
    n_fit = int(round(subsample * n_samples))
    if k_values[-1] > n_fit:
        raise ValueError(
            f"k_range goes up to {k_values[-1]} but each subsample holds only {n_fit} "
            f"of the {n_samples} samples; use a smaller k or more data."
        )
    return n_fit


def _largest_stable_k(k_values, scores, tolerance):
    """The largest k whose stability is within ``tolerance`` of the best."""
    stability = scores.mean(axis=1)
    best = stability.max()
    return int(k_values[np.flatnonzero(stability >= best - tolerance).max()])


def _check_k_range(k_range):
    try:
        k_values = np.array(sorted(set(int(k) for k in k_range)), dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"k_range must be integers; got {k_range!r}.") from None
    if len(k_values) < 2 or k_values[0] < 2:
        raise ValueError(
            f"k_range needs at least two candidates, each at least 2; got "
            f"{k_values.tolist()}."
        )
    return k_values


def _check_options(features, n_resamples, subsample, tolerance, n_init, max_samples):
    if features not in _FEATURES:
        raise ValueError(
            f"features must be one of {list(_FEATURES)}; got {features!r}."
        )
    for name, value, low in (
        ("n_resamples", n_resamples, 1),
        ("n_init", n_init, 1),
        ("max_samples", max_samples, 10),
    ):
        if not isinstance(value, Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    if not isinstance(subsample, Real) or not 0 < subsample < 1:
        raise ValueError(f"subsample must be in (0, 1); got {subsample!r}.")
    if not isinstance(tolerance, Real) or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1); got {tolerance!r}.")


def _features(X, model, features, random_state, verbose):
    """The matrix to cluster, its description, the model and its training time.

    The training time (None when the model was not trained here) counts the
    features' computation too.
    """
    start = time.perf_counter()
    from sklearn.preprocessing import normalize

    if isinstance(model, str):
        if model != "precomputed":
            raise ValueError(
                f"model must be None, 'precomputed' or an estimator; got {model!r}."
            )
        values = np.asarray(X, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(
                f"with model='precomputed', X must be a 2-D array of features; got "
                f"shape {values.shape}."
            )
        return values, f"the given features ({values.shape[1]} columns)", None, None
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if model is None:
        from deepclust import ContrastiveDisentangler

        model = ContrastiveDisentangler(random_state=random_state, verbose=verbose)
    try:
        check_is_fitted(model)
        trained = False
    except NotFittedError:
        model = clone(model).fit(X)
        trained = True
    if features == "embedding":
        values = model.embed(X)
        what = "backbone embeddings"
    else:
        values = model.transform(X)
        what = "transform outputs"
    description = (
        f"L2-normalised {what} ({values.shape[1]}-d) of {type(model).__name__}"
    )
    finite = np.isfinite(values).all(axis=1)
    values = values.astype(np.float64)
    # Contrastive features are compared by cosine; on the unit sphere KMeans's
    # Euclidean distance ranks neighbours as the cosine does.
    values[finite] = normalize(values[finite])
    if not trained:
        return values, description, model, None
    fit_seconds = time.perf_counter() - start
    description += (
        f" ({model.n_epochs_} epochs), trained once for this ({fit_seconds:.1f} s)"
    )
    return values, description, model, fit_seconds


def _stability_scores(values, k_values, n_resamples, n_fit, n_init, rng):
    """ARI between the KMeans clusterings of each pair of subsamples, per k."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    n_samples = len(values)
    # The same pairs and seeds for every k: differences between k then come
    # from k, not from the draws.
    pairs = [
        (
            rng.choice(n_samples, n_fit, replace=False),
            rng.choice(n_samples, n_fit, replace=False),
        )
        for _ in range(n_resamples)
    ]
    seeds = rng.integers(np.iinfo(np.int32).max, size=(n_resamples, 2))
    scores = np.empty((len(k_values), n_resamples))
    # Each fit is small: thread start-up and spin-waits cost more than they
    # save (8x slower with 2 threads on a loaded 2-core machine).
    with threadpool_limits(limits=1):
        for row, k in enumerate(k_values):
            for column, ((first, second), (seed1, seed2)) in enumerate(
                zip(pairs, seeds, strict=True)
            ):
                labels = [
                    KMeans(int(k), n_init=n_init, random_state=int(seed))
                    .fit(values[subset])
                    .predict(values)
                    for subset, seed in ((first, seed1), (second, seed2))
                ]
                scores[row, column] = adjusted_rand_score(*labels)
    return scores


def _cautions(result):
    notes = []
    stability = result.stability
    if stability.max() < _LOW_STABILITY:
        notes.append(
            f"every k is unstable (best stability {stability.max():.3f} < "
            f"{_LOW_STABILITY}): the features show no clear groups; do not trust "
            "this k."
        )
    if result.n_clusters == result.k_values[-1]:
        notes.append("the chosen k is the largest tried: try larger values too.")
    elif result.n_clusters == result.k_values[0] and result.k_values[0] > 2:
        notes.append("the chosen k is the smallest tried: try smaller values too.")
    per_cluster = result.n_samples / result.n_clusters
    if per_cluster < _FEW_PER_CLUSTER:
        notes.append(
            f"about {per_cluster:.0f} samples per cluster: too few for stable KMeans "
            "fits; the choice is noisy."
        )
    return notes
