"""The scikit-learn estimators of deepclust."""

from deepclust.estimators._cd import ContrastiveDisentangler
from deepclust.estimators._cdc import CDCClusterer

__all__ = ["CDCClusterer", "ContrastiveDisentangler"]
