"""ContrastiveDisentangler: Contrastive Disentangling (CD) as a scikit-learn transformer."""

from __future__ import annotations

from numbers import Integral, Real

import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin
from sklearn.utils._param_validation import Interval, StrOptions

from deepclust.estimators._base import (
    SHARED_ATTRIBUTES_DOC,
    SHARED_CONSTRAINTS,
    SHARED_PARAMETERS_DOC,
    BaseDeepEstimator,
    Float32TransformerMixin,
    TwoViewObjective,
    keyword_init,
)
from deepclust.losses import CDLoss
from deepclust.models import CDModel

_CD_DEFAULTS = {
    "n_heads": 128,
    "projection_dim": 128,
    "instance_temperature": 0.5,
    "feature_temperature": 1.0,
    "entropy_weight": 1.0,
    "transform_output": "heads",
}


class CDObjective(TwoViewObjective):
    """CD loss of a model on two augmented views of a batch."""

    def __init__(self, loss: CDLoss, augment, channels_last=False) -> None:
        super().__init__(augment, channels_last)
        self.loss = loss

    def compute(self, model, view1, view2):
        z1, y1 = model(view1)
        z2, y2 = model(view2)
        return self.loss(z1, z2, y1, y2)


class ContrastiveDisentangler(Float32TransformerMixin, ClassNamePrefixFeaturesOutMixin, BaseDeepEstimator):
    """Contrastive Disentangling (CD): K sigmoid feature heads, no number of classes.

    A backbone f, an instance projector g and a feature predictor h (f -> g -> h)
    are trained with the instance NT-Xent, a feature-level NT-Xent over the 2K head
    columns and a normalised binary entropy term:
    L = L_inst + L_feat - alpha * L_entropy [1]_. ``transform`` returns the K head
    activations in (0, 1), a compact representation for KMeans or any other model.

    The paper's full setting is
    ``ContrastiveDisentangler(backbone="resnet34", stem="imagenet", image_size=224,
    batch_size=128, max_epochs=1000, augment_strength=0.5)`` (CIFAR; s=1.0 and
    ``blur=True`` for ImageNet-10) on a GPU.

    Parameters
    ----------
    n_heads : int, default=128
        Number K of feature heads (outputs of ``transform``).
    projection_dim : int, default=128
        Output dimension of the instance projector g.
    instance_temperature : float, default=0.5
        tau_inst of the instance NT-Xent.
    feature_temperature : float, default=1.0
        tau_feat of the feature-level NT-Xent.
    entropy_weight : float, default=1.0
        alpha, the weight of the normalised binary entropy term.
    transform_output : {"heads", "embedding"}, default="heads"
        What ``transform`` returns: head activations (n_samples, n_heads) or backbone
        embeddings (n_samples, backbone_dim).
{shared}
    Attributes
    ----------
    net_ : ContrastiveNet
        The trained skorch net; ``net_.module_`` is the torch :class:`CDModel`.
    history_ : skorch.History
        Per-epoch and per-batch losses (``train_loss``, ``instance_loss``,
        ``feature_loss``, ``entropy_loss``).
    n_epochs_ : int
        Epochs trained.
{shared_attributes}

    See Also
    --------
    CDCClusterer : Deep clusterer with a known number of clusters.

    References
    ----------
    .. [1] Jiang, "Contrastive Disentangling: Fine-grained representation learning
       through multi-level contrastive learning without class priors",
       arXiv:2409.04867, 2024.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust import ContrastiveDisentangler
    >>> X, _ = make_blobs(n_samples=60, n_features=4, centers=3, random_state=0)
    >>> cd = ContrastiveDisentangler(n_heads=8, max_epochs=2, batch_size=30,
    ...                              random_state=0).fit(X)
    >>> cd.transform(X[:5]).shape
    (5, 8)
    """

    __init__ = keyword_init(_CD_DEFAULTS)
    _transform_outputs = ("heads", "embedding")

    _parameter_constraints: dict = {
        **SHARED_CONSTRAINTS,
        "n_heads": [Interval(Integral, 2, None, closed="left")],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "instance_temperature": [Interval(Real, 0, None, closed="neither")],
        "feature_temperature": [Interval(Real, 0, None, closed="neither")],
        "entropy_weight": [Interval(Real, None, None, closed="neither")],
        "transform_output": [StrOptions(set(_transform_outputs))],
    }

    _model_class = CDModel

    def _head_params(self):
        return {"projection_dim": self.projection_dim, "n_heads": self.n_heads}

    def _build_objective(self, config):
        loss = CDLoss(self.instance_temperature, self.feature_temperature, self.entropy_weight)
        return CDObjective(loss, config["augment"], config["channels_last"])

    def transform(self, X):
        """Head activations in (0, 1), or backbone embeddings.

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path
            Same kinds of input as ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_heads) or (n_samples, backbone_dim)
            float32; see ``transform_output``.
        """
        if self._checked_transform_output() == "embedding":
            return self.embed(X)
        return self._map_batches(X, lambda model, unit: model(unit)[1])

    @property
    def _n_features_out(self):
        if self._checked_transform_output() == "embedding":
            return self._model().projector[0].in_features
        return self.n_heads

    def score(self, X, y=None):
        """View-matching accuracy of the head activations (higher is better).

        Each sample is augmented twice (with a fixed seed); the score is the
        fraction of first views whose most similar second view (cosine of head
        activations, within batches of ``predict_batch_size``) is their own. It
        does not depend on the loss temperatures, so GridSearchCV can compare them.

        Parameters
        ----------
        X : array-like or images
        y : Ignored

        Returns
        -------
        score : float in [0, 1]
        """
        first, second = self._augmented_pairs(X, lambda model, unit: model(unit)[1])
        return view_matching_accuracy(first, second)


def view_matching_accuracy(first, second) -> float:
    """Fraction of rows whose nearest row (cosine) in the paired batch is their own."""
    hits = total = 0
    for a, b in zip(first, second):
        a = torch.nn.functional.normalize(a, dim=1)
        b = torch.nn.functional.normalize(b, dim=1)
        hits += int((a @ b.T).argmax(dim=1).eq(torch.arange(len(a))).sum())
        total += len(a)
    return hits / total


ContrastiveDisentangler.__doc__ = ContrastiveDisentangler.__doc__.replace(
    "{shared}", SHARED_PARAMETERS_DOC.strip("\n")
).replace("{shared_attributes}", SHARED_ATTRIBUTES_DOC.strip("\n"))
