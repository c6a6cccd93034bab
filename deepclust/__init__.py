"""deepclust: deep clustering as scikit-learn estimators.

``ContrastiveDisentangler`` (Contrastive Disentangling) learns K sigmoid feature
heads without a number of classes; ``CDCClusterer`` (Contrastive representation
Disentanglement for Clustering) learns a balanced clustering end to end. Both train
through skorch on CPU or GPU and export to ONNX.

The estimators are imported lazily so that the torch-free parts (the ONNX inference
class, input reading, metrics) work where torch is not installed.
"""

from deepclust._version import __version__

__all__ = ["CDCClusterer", "ContrastiveDisentangler", "__version__", "load"]


def __getattr__(name):
    if name in {"CDCClusterer", "ContrastiveDisentangler"}:
        from deepclust import estimators

        return getattr(estimators, name)
    if name == "load":
        from deepclust.persistence import load

        return load
    raise AttributeError(f"module 'deepclust' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
