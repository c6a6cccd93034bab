"""The scikit-learn estimators of deepclust.

The classes are imported on first use, so that torch-free modules (the command
line's argument parsing) can read :mod:`deepclust.estimators._config` without
loading torch.
"""

__all__ = ["CDCClusterer", "ContrastiveDisentangler"]


def __getattr__(name):
    if name == "CDCClusterer":
        from deepclust.estimators._cdc import CDCClusterer

        return CDCClusterer
    if name == "ContrastiveDisentangler":
        from deepclust.estimators._cd import ContrastiveDisentangler

        return ContrastiveDisentangler
    raise AttributeError(f"module 'deepclust.estimators' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
