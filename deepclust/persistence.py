"""Pickle-free saving and loading of fitted deepclust estimators.

A saved model is a directory holding

- ``config.json``: the format version, the library version, the estimator class,
  its parameters, the fitted attributes (among them ``training_config_``, which
  describes the network) and the names and SHA-256 of the two other files;
- ``model-<hash>.safetensors``: the network's weights and buffers (``module.*``)
  and the fitted arrays such as ``labels_`` (``attributes.*``);
- ``history-<hash>.json``: the skorch training history.

Saving over a model is atomic: the data files are new files named after their
content, and ``config.json`` is replaced last, in one rename, so an interrupted
save leaves the previous model loadable.

Loading reads JSON and safetensors only, so it executes no code from the files,
unlike ``pickle``/``joblib``/``torch.load``. It reads regular files of bounded
size only, sets only the fitted attributes this version knows (with checked
types), rebuilds the network from the stored description and checks the weights
against it: a modified, truncated, mismatched or hostile folder raises a
:class:`ValueError` that says what is wrong. Models saved by older versions load
too (format versions 1 and 2).
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from deepclust import estimators
from deepclust.estimators._saving import (
    CONFIG_FILE,
    MODEL_FORMAT_VERSION,
    load_estimator,
)

__all__ = [
    "CONFIG_FILE",
    "MODEL_FORMAT_VERSION",
    "load",
    "save",
]

# The estimator classes register themselves for loading when they are imported
# (deepclust.estimators imports them on first use).
_REGISTERED = (estimators.CDCClusterer, estimators.ContrastiveDisentangler)


def save(estimator, path) -> None:
    """Save a fitted estimator to a directory, without pickle.

    Same as ``estimator.save(path)``; see
    :meth:`deepclust.CDCClusterer.save`.

    Parameters
    ----------
    estimator : ContrastiveDisentangler or CDCClusterer
        A fitted estimator with a named backbone and no callbacks.
    path : str or path-like
        Directory to write (created if needed).
    """
    estimator.save(path)


def load(path, *, device=None):
    """Load an estimator written by ``save``, executing no code from the files.

    The network is rebuilt from the stored description, its weights are read
    with safetensors, and the SHA-256 of the files and the names and shapes of
    the tensors are checked.

    Parameters
    ----------
    path : str or path-like
        Directory written by ``est.save(path)``.
    device : str, default=None
        Device to load the model on ("cpu", "cuda", "cuda:N" or "auto"). None
        keeps the saved ``device`` parameter when that device exists here and
        falls back to the CPU with a warning otherwise (a model trained on a GPU
        loads on a CPU-only machine). The estimator's ``device`` parameter is set
        to the device used.

    Returns
    -------
    estimator : ContrastiveDisentangler or CDCClusterer
        The fitted estimator, ready for ``predict``/``transform``/``score`` and
        export. It gives the same outputs as the saved one.

    Raises
    ------
    ValueError
        If the directory is not a deepclust model, was written by a newer format
        version, or its files were modified, truncated or do not match each other.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust import CDCClusterer
    >>> from deepclust.persistence import load
    >>> X, _ = make_blobs(n_samples=40, n_features=3, centers=2, random_state=0)
    >>> cdc = CDCClusterer(n_clusters=2, max_epochs=1, batch_size=20,
    ...                    random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     cdc.save(directory)
    ...     loaded = load(directory)
    >>> bool(np.array_equal(loaded.predict_proba(X), cdc.predict_proba(X)))
    True
    """
    return load_estimator(path, device=device)
