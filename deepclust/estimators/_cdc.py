"""CDCClusterer: Contrastive representation Disentanglement for Clustering (CDC)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin, ClusterMixin
from sklearn.utils._param_validation import Interval, StrOptions

from deepclust._inputs import InputError, labels_from_proba
from deepclust.augment import StrongAugment
from deepclust.estimators._base import (
    SHARED_ATTRIBUTES_DOC,
    SHARED_CONSTRAINTS,
    SHARED_PARAMETERS_DOC,
    BaseDeepEstimator,
    Float32TransformerMixin,
    TwoViewObjective,
    keyword_init,
    warn_empty_clusters,
)
from deepclust.losses import CDCLoss, ConfidenceBasedCE, split_projection
from deepclust.models import CDCModel

_CDC_DEFAULTS = {
    "n_clusters": 10,
    "instance_dim": 128,
    "temperature": 0.15,
    "cluster_temperature": 0.1,
    "cluster_weight": 5.0,
    "sinkhorn_epsilon": 0.05,
    "sinkhorn_iterations": 3,
    "swapped_assignment": True,
    "self_label_epochs": 0,
    "self_label_threshold": 0.99,
    "self_label_lr": 1e-4,
    "transform_output": "proba",
}


class CDCObjective(TwoViewObjective):
    """CDC loss for the first ``n_cluster_epochs`` epochs, then CDC + self-labelling.

    Self-labelling follows SCAN: the weak view is the un-augmented image (its
    logits computed without gradient, the model still in train mode), the strong
    view adds RandAugment-style operations and cutout. The paper allows the
    confidence-based cross-entropy to be "added to the overall objective" or used
    alone for fine-tuning; it is added here, because alone it trains on the few
    confident samples only (3% of the digits at threshold 0.99) and the rest of
    the representation drifts (digits ACC fell from 0.89 to 0.65 in 20 epochs).
    """

    def __init__(self, loss: CDCLoss, augment, strong_augment, self_label_loss,
                 n_cluster_epochs: int, channels_last=False) -> None:
        super().__init__(augment, channels_last)
        self.loss = loss
        self.strong_augment = strong_augment
        self.self_label_loss = self_label_loss
        self.n_cluster_epochs = n_cluster_epochs

    def forward(self, model, unit, generator=None, epoch=0):
        loss, parts = super().forward(model, unit, generator, epoch)
        if epoch < self.n_cluster_epochs or self.strong_augment is None:
            return loss, parts
        with torch.no_grad():
            weak = model.cluster_logits(unit)
            strong = self.strong_augment(unit, generator)
        self_label = self.self_label_loss(weak, model.cluster_logits(strong))
        if self_label is None:
            return loss, parts
        return loss + self_label, {**parts, "self_label": self_label.detach()}

    def compute(self, model, view1, view2):
        return self.loss(model(view1), model(view2))


# Float32TransformerMixin comes before ClusterMixin, whose tags would otherwise
# reset preserves_dtype to [] (KMeans-style transforms return distances).
class CDCClusterer(Float32TransformerMixin, ClusterMixin, ClassNamePrefixFeaturesOutMixin,
                   BaseDeepEstimator):
    """Contrastive representation Disentanglement for Clustering (CDC).

    The projection of every image is split into a cluster part z^c (n_clusters
    dimensions) and an instance part z^n, each L2-normalised. An InfoNCE loss on the
    concatenation [z^c, z^n] learns instance discrimination in which z^c re-weights
    the negatives, and a cross-entropy towards Sinkhorn-Knopp equipartition codes
    makes softmax(z^c / t) a balanced cluster assignment [1]_:
    L = L_InfoNCE + alpha * L_CE. An optional SCAN-style self-labelling stage [2]_
    fine-tunes on confident predictions.

    Open points of the paper and the choices made here:

    * the concatenation is not re-normalised, so s = s^c + s^n and
      exp(s/tau) = exp(s^c/tau) exp(s^n/tau), the factorisation of the paper's
      Eq. 2-3 (re-normalising would halve both cosines and double tau);
    * Sinkhorn runs on the normalised z^c (bounded in [-1, 1], as in the paper's
      pseudo-code) with epsilon=0.05 and 3 iterations, in the log domain;
    * targets are swapped between views by default (SwAV's swapped prediction),
      which adds view-invariance to the cluster head; ``swapped_assignment=False``
      uses each view's own codes;
    * the head is a two-layer MLP (SimCLR/MoCo v2 style) and the optimiser Adam
      (the paper uses SGD with lr 0.06 for 1200 epochs).

    The paper's CIFAR-10 setting is ``CDCClusterer(n_clusters=10,
    backbone="resnet18", stem="cifar", batch_size=512, max_epochs=1200,
    temperature=0.15, cluster_temperature=0.1, cluster_weight=5.0,
    augment_strength=0.5, self_label_epochs=200)`` on a GPU.

    Parameters
    ----------
    n_clusters : int, default=10
        Number of clusters K (the dimension of z^c); at least 2.
    instance_dim : int, default=128
        Dimension of the instance part z^n.
    temperature : float, default=0.15
        tau of the InfoNCE term (the paper uses 0.4 for ImageNet).
    cluster_temperature : float, default=0.1
        t in softmax(z^c / t); also the temperature of ``predict_proba``.
    cluster_weight : float, default=5.0
        alpha, the weight of the cross-entropy term (1.0 for ImageNet).
    sinkhorn_epsilon : float, default=0.05
        Entropic regularisation of Sinkhorn-Knopp.
    sinkhorn_iterations : int, default=3
        Sinkhorn-Knopp iterations.
    swapped_assignment : bool, default=True
        Use the other view's Sinkhorn codes as targets (True) or the same view's.
    self_label_epochs : int, default=0
        Epochs of self-labelling after the ``max_epochs`` clustering epochs: the
        CDC loss plus SCAN's confidence-based cross-entropy between un-augmented
        and strongly augmented views (batches without a confident sample add
        nothing).
    self_label_threshold : float, default=0.99
        Confidence above which (strictly) a prediction becomes a pseudo-label.
    self_label_lr : float, default=1e-4
        Learning rate during self-labelling (SCAN's value).
    transform_output : {"proba", "embedding", "instance"}, default="proba"
        What ``transform`` returns: cluster probabilities (n_samples, n_clusters),
        backbone embeddings, or the normalised instance part z^n.
{shared}
    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each input of X, from a final eval-mode pass (so
        ``fit_predict(X)`` equals ``fit(X).predict(X)``); -1 for image files
        that could not be read (``on_error="skip"``).
    cluster_sizes_ : ndarray of shape (n_clusters,)
        Number of training samples in each cluster (a ConvergenceWarning is
        raised when some are empty).
    net_ : ContrastiveNet
        The trained skorch net; ``net_.module_`` is the torch :class:`CDCModel`.
    history_ : skorch.History
        Per-epoch and per-batch losses (``train_loss``, ``instance_loss``,
        ``cluster_loss``, ``self_label_loss``).
    n_epochs_ : int
        Epochs trained (clustering plus self-labelling).
{shared_attributes}

    See Also
    --------
    ContrastiveDisentangler : Representation learning without a number of classes.
    sklearn.cluster.KMeans : Classical clustering.

    References
    ----------
    .. [1] Ding, Zhang, Yang, Krovi, Luo, "Contrastive Representation
       Disentanglement for Clustering", arXiv:2306.05439, 2023.
    .. [2] Van Gansbeke et al., "SCAN: Learning to Classify Images without
       Labels", ECCV 2020.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust import CDCClusterer
    >>> X, _ = make_blobs(n_samples=60, n_features=4, centers=3, random_state=0)
    >>> cdc = CDCClusterer(n_clusters=3, max_epochs=2, batch_size=30,
    ...                    random_state=0).fit(X)
    >>> cdc.labels_.shape, cdc.predict_proba(X[:2]).shape
    ((60,), (2, 3))
    """

    __init__ = keyword_init(_CDC_DEFAULTS, positional=("n_clusters",))
    _transform_outputs = ("proba", "embedding", "instance")

    _parameter_constraints: dict = {
        **SHARED_CONSTRAINTS,
        "n_clusters": [Interval(Integral, 2, None, closed="left")],
        "instance_dim": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "cluster_temperature": [Interval(Real, 0, None, closed="neither")],
        "cluster_weight": [Interval(Real, 0, None, closed="left")],
        "sinkhorn_epsilon": [Interval(Real, 0, None, closed="neither")],
        "sinkhorn_iterations": [Interval(Integral, 1, None, closed="left")],
        "swapped_assignment": ["boolean"],
        "self_label_epochs": [Interval(Integral, 0, None, closed="left")],
        "self_label_threshold": [Interval(Real, 0, 1, closed="left")],
        "self_label_lr": [Interval(Real, 0, None, closed="neither")],
        "transform_output": [StrOptions(set(_transform_outputs))],
    }

    _model_class = CDCModel

    def _read_fit_input(self, X):
        source = super()._read_fit_input(X)
        if source.n_samples < self.n_clusters:
            raise InputError(
                f"X has {source.n_samples} samples but n_clusters={self.n_clusters}; "
                "at least n_clusters samples are needed."
            )
        return source

    def _head_params(self):
        return {"n_clusters": self.n_clusters, "instance_dim": self.instance_dim,
                "cluster_temperature": self.cluster_temperature}

    def _build_objective(self, config):
        loss = CDCLoss(
            self.n_clusters,
            temperature=self.temperature,
            cluster_temperature=self.cluster_temperature,
            cluster_weight=self.cluster_weight,
            sinkhorn_epsilon=self.sinkhorn_epsilon,
            sinkhorn_iterations=self.sinkhorn_iterations,
            swapped=self.swapped_assignment,
        )
        strong = None
        if self.self_label_epochs:
            # Tabular rows have no image operations: feature noise plays the strong view.
            strong = (
                StrongAugment(flip_p=config["augment"].flip_p)
                if self.input_kind_ == "image"
                else config["augment"]
            )
        return CDCObjective(
            loss, config["augment"], strong, ConfidenceBasedCE(self.self_label_threshold),
            n_cluster_epochs=config["max_epochs"], channels_last=config["channels_last"],
        )

    def _total_epochs(self, config):
        return config["max_epochs"] + self.self_label_epochs

    def _later_stage_lr(self):
        return self.self_label_lr

    def _after_fit(self, source):
        probabilities = self._map_source(source, _cluster_probabilities)
        self.labels_ = labels_from_proba(probabilities)
        self.cluster_sizes_ = np.bincount(
            self.labels_[self.labels_ >= 0], minlength=self.n_clusters
        )
        warn_empty_clusters(self.cluster_sizes_, type(self).__name__)

    def predict_proba(self, X):
        """Cluster probabilities softmax(z^c / t).

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters)
            float32 rows summing to 1, one per input in input order; NaN rows
            for image files that could not be read (``on_error="skip"``).
        """
        return self._map_batches(X, _cluster_probabilities)

    def predict(self, X):
        """Cluster index of each sample (argmax of z^c).

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            int64 cluster indices in [0, n_clusters), one per input in input
            order; -1 for image files that could not be read
            (``on_error="skip"``).
        """
        return labels_from_proba(self.predict_proba(X))

    def transform(self, X):
        """Cluster probabilities, backbone embeddings or instance embeddings.

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out)
            float32; see ``transform_output``.
        """
        output = self._checked_transform_output()
        if output == "embedding":
            return self.embed(X)
        if output == "instance":
            return self._map_batches(X, _instance_embedding)
        return self.predict_proba(X)

    @property
    def _n_features_out(self):
        output = self._checked_transform_output()
        if output == "embedding":
            return self._model().head[0].in_features
        if output == "instance":
            return self.instance_dim
        return self.n_clusters

    def score(self, X, y=None):
        """Cluster consistency under augmentation times cluster balance (higher is better).

        Each sample is augmented twice with a fixed seed; the score is the fraction
        whose two views fall in the same cluster, multiplied by the normalised
        entropy of the cluster sizes (1 for equal sizes, 0 when everything falls in
        one cluster), so that a collapsed clustering cannot score well. It does not
        depend on the temperatures or alpha, so GridSearchCV can compare them.

        Parameters
        ----------
        X : array-like or images
        y : Ignored

        Returns
        -------
        score : float in [0, 1]
        """
        first, second = self._augmented_pairs(X, _cluster_probabilities)
        labels1 = torch.cat(first).argmax(dim=1)
        labels2 = torch.cat(second).argmax(dim=1)
        agreement = float(labels1.eq(labels2).float().mean())
        sizes = torch.bincount(torch.cat([labels1, labels2]), minlength=self.n_clusters)
        shares = sizes[sizes > 0].float() / sizes.sum()
        balance = float(-(shares * shares.log()).sum() / np.log(self.n_clusters))
        return max(0.0, agreement * balance)  # never -0.0 for a single cluster


def _cluster_probabilities(model, unit):
    return model.cluster_probabilities(unit)


def _instance_embedding(model, unit):
    return split_projection(model(unit), model.n_clusters)[1]


CDCClusterer.__doc__ = CDCClusterer.__doc__.replace(
    "{shared}", SHARED_PARAMETERS_DOC.strip("\n")
).replace("{shared_attributes}", SHARED_ATTRIBUTES_DOC.strip("\n"))
