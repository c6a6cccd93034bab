"""Testing for ContrastiveDisentangler (Contrastive Disentangling)."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from deepclust import ContrastiveDisentangler
from deepclust.backbones import MLP

TINY = {
    "n_heads": 6,
    "projection_dim": 4,
    "max_epochs": 2,
    "batch_size": 16,
    "device": "cpu",
    "random_state": 0,
}


@pytest.fixture(scope="module")
def cd(blobs):
    """ContrastiveDisentangler fitted on the blobs (read-only)."""
    return ContrastiveDisentangler(**TINY).fit(blobs[0])


def test_transform_heads(cd, blobs):
    # Check that transform returns float32 head activations strictly inside (0, 1).
    heads = cd.transform(blobs[0])
    assert heads.shape == (60, 6)
    assert heads.dtype == np.float32
    assert ((heads > 0) & (heads < 1)).all()


def test_transform_embedding(cd, blobs):
    # Check that transform_output="embedding" returns the backbone features and
    # that the output feature names follow.
    backbone_dim = MLP(2).out_dim
    cd.set_params(transform_output="embedding")
    try:
        embedding = cd.transform(blobs[0])
        names = cd.get_feature_names_out()
    finally:
        cd.set_params(transform_output="heads")
    assert embedding.shape == (60, backbone_dim)
    assert embedding.dtype == np.float32
    np.testing.assert_array_equal(embedding, cd.embed(blobs[0]))
    assert len(names) == backbone_dim


def test_feature_names_out_count_heads(cd):
    # Check that there is one output feature name per head.
    names = cd.get_feature_names_out()
    assert len(names) == cd.n_heads
    assert names[0] == "contrastivedisentangler0"


def test_streamed_transform_matches_one_batch(cd, blobs):
    # Check that transform gives the same rows whatever predict_batch_size is.
    one_batch = cd.transform(blobs[0])
    previous = cd.predict_batch_size
    cd.set_params(predict_batch_size=7)
    try:
        streamed = cd.transform(blobs[0])
    finally:
        cd.set_params(predict_batch_size=previous)
    np.testing.assert_allclose(streamed, one_batch, rtol=1e-6, atol=1e-7)


def test_history_records_loss_parts(cd):
    # Check that the history holds the epoch loss and the per-batch loss parts.
    assert cd.n_epochs_ == 2
    assert np.isfinite(cd.history_[:, "train_loss"]).all()
    for part in ["instance_loss", "feature_loss", "entropy_loss"]:
        values = cd.history_[-1, "batches", :, part]
        assert len(values) == 4
        assert np.isfinite(values).all()
    entropy = np.asarray(cd.history_[:, "batches", :, "entropy_loss"])
    assert ((entropy >= 0) & (entropy <= 1)).all()


def test_entropy_weight_zero_drops_entropy_term(blobs):
    # Check that entropy_weight=0 makes the loss the sum of the two NT-Xent terms.
    cd = ContrastiveDisentangler(**{**TINY, "max_epochs": 1, "entropy_weight": 0.0})
    cd.fit(blobs[0])
    batch = cd.history_[-1, "batches", 0]
    expected = batch["instance_loss"] + batch["feature_loss"]
    np.testing.assert_allclose(batch["train_loss"], expected, rtol=1e-5)


def test_pipeline_with_kmeans(blobs):
    # Check that CD heads feed KMeans in a Pipeline and the blobs stay separable.
    X, y = blobs
    pipeline = make_pipeline(
        ContrastiveDisentangler(**TINY), KMeans(3, n_init=3, random_state=0)
    )
    labels = pipeline.fit_predict(X)
    assert labels.shape == (60,)
    assert len(np.unique(labels)) == 3


def test_grid_search_entropy_weight(blobs):
    # Check that GridSearchCV can select entropy_weight with the estimator's own score.
    search = GridSearchCV(
        ContrastiveDisentangler(**TINY), {"entropy_weight": [0.5, 1.0]}, cv=2
    )
    search.fit(blobs[0])
    assert search.best_params_["entropy_weight"] in (0.5, 1.0)
    scores = search.cv_results_["mean_test_score"]
    assert ((scores >= 0) & (scores <= 1)).all()
    assert search.best_estimator_.transform(blobs[0]).shape == (60, 6)
