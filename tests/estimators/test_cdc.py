"""Testing for CDCClusterer (Contrastive Disentanglement for Clustering)."""

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from deepclust import CDCClusterer
from deepclust.backbones import MLP
from deepclust.estimators._config import ENSEMBLE_TEMPERATURE

TINY = {
    "n_clusters": 3,
    "instance_dim": 5,
    "max_epochs": 3,
    "batch_size": 16,
    "device": "cpu",
    "random_state": 0,
}


@pytest.fixture(scope="module")
def cdc(blobs):
    """CDCClusterer fitted on the blobs (read-only)."""
    return CDCClusterer(**TINY).fit(blobs[0])


def test_n_clusters_is_positional():
    # Check that n_clusters is the one positional parameter, as in KMeans.
    assert CDCClusterer(4).n_clusters == 4
    with pytest.raises(TypeError):
        CDCClusterer(4, 8)


def test_labels(cdc, blobs):
    # Check that labels_ are int64 cluster indices that predict reproduces.
    assert cdc.labels_.dtype == np.int64
    assert cdc.labels_.shape == (60,)
    assert set(np.unique(cdc.labels_)) <= {0, 1, 2}
    np.testing.assert_array_equal(cdc.predict(blobs[0]), cdc.labels_)


def test_fit_predict_equals_fit_then_predict(blobs):
    # Check that fit_predict(X) equals fit(X).predict(X).
    X = blobs[0]
    np.testing.assert_array_equal(
        CDCClusterer(**TINY).fit_predict(X), CDCClusterer(**TINY).fit(X).predict(X)
    )


def test_predict_proba(cdc, blobs):
    # Check that predict_proba gives float32 rows summing to 1 whose argmax is predict.
    proba = cdc.predict_proba(blobs[0])
    assert proba.shape == (60, 3)
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), cdc.predict(blobs[0]))


def test_streamed_predict_matches_one_batch(cdc, blobs):
    # Check that predict_proba gives the same rows whatever predict_batch_size is.
    one_batch = cdc.predict_proba(blobs[0])
    previous = cdc.predict_batch_size
    cdc.set_params(predict_batch_size=7)
    try:
        streamed = cdc.predict_proba(blobs[0])
    finally:
        cdc.set_params(predict_batch_size=previous)
    np.testing.assert_allclose(streamed, one_batch, rtol=1e-5, atol=1e-6)


def test_cluster_sizes(cdc):
    # Check that cluster_sizes_ counts the training labels of every cluster.
    assert cdc.cluster_sizes_.shape == (3,)
    assert cdc.cluster_sizes_.sum() == 60
    np.testing.assert_array_equal(
        cdc.cluster_sizes_, np.bincount(cdc.labels_, minlength=3)
    )


@pytest.mark.parametrize(
    "transform_output, n_columns",
    [("proba", 3), ("embedding", MLP(2).out_dim), ("instance", 5)],
)
def test_transform_output(cdc, blobs, transform_output, n_columns):
    # Check that every transform_output has the expected shape, dtype and names.
    cdc.set_params(transform_output=transform_output)
    try:
        output = cdc.transform(blobs[0])
        names = cdc.get_feature_names_out()
    finally:
        cdc.set_params(transform_output="proba")
    assert output.shape == (60, n_columns)
    assert output.dtype == np.float32
    assert len(names) == n_columns
    if transform_output == "proba":
        np.testing.assert_array_equal(output, cdc.predict_proba(blobs[0]))
    if transform_output == "instance":
        np.testing.assert_allclose(np.linalg.norm(output, axis=1), 1.0, rtol=1e-5)


def test_history_records_loss_parts(cdc):
    # Check that the history holds the epoch loss and the per-batch loss parts.
    assert cdc.n_epochs_ == 3
    assert np.isfinite(cdc.history_[:, "train_loss"]).all()
    for part in ["instance_loss", "cluster_loss"]:
        values = cdc.history_[-1, "batches", :, part]
        assert len(values) == 4
        assert np.isfinite(values).all()


def _batch_losses(history_batches):
    """Per-batch (train_loss, instance + 5 * cluster, self_label or 0) arrays."""
    total = np.array([batch["train_loss"] for batch in history_batches])
    cdc_part = np.array(
        [
            batch["instance_loss"] + 5.0 * batch["cluster_loss"]
            for batch in history_batches
        ]
    )
    self_label = np.array(
        [batch.get("self_label_loss", 0.0) for batch in history_batches]
    )
    return total, cdc_part, self_label


def test_self_labelling_with_confident_samples(blobs):
    # Check that self-labelling epochs follow the clustering epochs, at
    # self_label_lr, and add the self-labelling loss to the CDC loss.
    cdc = CDCClusterer(
        **{**TINY, "max_epochs": 1},
        self_label_epochs=1,
        self_label_threshold=0.0,
        self_label_lr=1e-5,
    )
    cdc.fit(blobs[0])
    assert cdc.n_epochs_ == 2
    first, last = cdc.history_[0, "batches"], cdc.history_[-1, "batches"]
    assert all("cluster_loss" in batch for batch in first)
    assert not any("self_label_loss" in batch for batch in first)
    assert all("self_label_loss" in batch for batch in last)
    total, cdc_part, self_label = _batch_losses(last)
    assert np.isfinite(self_label).all() and (self_label > 0).all()
    np.testing.assert_allclose(total, cdc_part + self_label, rtol=1e-5)
    np.testing.assert_allclose(cdc.history_[-1, "event_lr"], 1e-5)


def test_self_labelling_without_confident_samples(blobs):
    # Check that self-labelling batches without confident samples train on the
    # CDC loss alone, without error. With 3 clusters and t=0.1 no probability
    # exceeds 0.99999, whatever the model.
    cdc = CDCClusterer(
        **{**TINY, "max_epochs": 1}, self_label_epochs=1, self_label_threshold=0.999999
    )
    cdc.fit(blobs[0])
    assert cdc.n_epochs_ == 2
    last = cdc.history_[-1, "batches"]
    assert not any("self_label_loss" in batch for batch in last)
    total, cdc_part, _ = _batch_losses(last)
    np.testing.assert_allclose(total, cdc_part, rtol=1e-5)
    assert cdc.labels_.shape == (60,)


def test_empty_clusters_warn():
    # Check that clusters left empty raise a ConvergenceWarning and show in
    # cluster_sizes_: identical samples all fall in one of the 8 clusters.
    cdc = CDCClusterer(**{**TINY, "n_clusters": 8})
    with pytest.warns(ConvergenceWarning, match="left 7 of 8 clusters empty"):
        cdc.fit(np.ones((12, 2)))
    assert sorted(cdc.cluster_sizes_.tolist()) == [0] * 7 + [12]


def test_swapped_assignment_false(blobs):
    # Check that swapped_assignment=False trains with each view's own codes,
    # which changes the cluster loss.
    own = CDCClusterer(**TINY, swapped_assignment=False).fit(blobs[0])
    swapped = CDCClusterer(**TINY).fit(blobs[0])
    own_loss = np.asarray(own.history_[:, "batches", :, "cluster_loss"])
    assert np.isfinite(own_loss).all()
    assert not np.allclose(own_loss, swapped.history_[:, "batches", :, "cluster_loss"])
    assert own.labels_.shape == (60,)


def test_pipeline_with_scaler(blobs):
    # Check that CDCClusterer works as the last step of a Pipeline.
    X = blobs[0] * 10.0 + 5.0
    pipeline = make_pipeline(StandardScaler(), CDCClusterer(**TINY))
    labels = pipeline.fit_predict(X)
    assert labels.shape == (60,)
    np.testing.assert_array_equal(pipeline.predict(X), labels)
    assert pipeline.predict_proba(X).shape == (60, 3)


@pytest.mark.parametrize("scoring", [None, "adjusted_rand_score"])
def test_grid_search(blobs, scoring):
    # Check that GridSearchCV can tune temperature and cluster_weight with the
    # estimator's own score, or with the ARI when labels are given.
    X, y = blobs
    grid = {"temperature": [0.15, 0.5], "cluster_weight": [1.0, 5.0]}
    search = GridSearchCV(
        CDCClusterer(**{**TINY, "max_epochs": 1}), grid, cv=2, scoring=scoring
    )
    search.fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 4
    assert np.isfinite(scores).all()
    if scoring is None:
        assert ((scores >= 0) & (scores <= 1)).all()
    assert search.best_params_ in search.cv_results_["params"]
    assert search.best_estimator_.labels_.shape == (60,)


def test_best_cluster_head_is_kept(blobs):
    # Check that with several heads the one with the lowest cluster loss over the
    # last epochs is selected, recorded, and used by predict: its loss is the
    # smallest of the per-head losses recorded in the history.
    cdc = CDCClusterer(**TINY, n_cluster_heads=4).fit(blobs[0])
    window = cdc.history_[-3:]
    losses = np.mean(
        [b["cluster_heads_loss"] for e in window for b in e["batches"]], axis=0
    )
    np.testing.assert_allclose(cdc.head_losses_, losses)
    assert cdc.selected_head_ == int(np.argmin(losses))
    model = cdc.net_.module_
    assert model.head.output_layer.out_features == 4 * 3 + TINY["instance_dim"]
    single = CDCClusterer(**TINY, n_cluster_heads=1).fit(blobs[0])
    assert single.selected_head_ == 0 and single.head_losses_ is None


def test_consensus_keeps_the_head_the_others_agree_with(blobs):
    # Check that head_selection="consensus" keeps the medoid of the heads'
    # partitions: the head whose mean ARI with the other heads is the highest,
    # recomputed here from the heads' own labels, and that predict uses it.
    from sklearn.metrics import adjusted_rand_score

    cdc = CDCClusterer(**TINY, n_cluster_heads=4, head_selection="consensus")
    cdc.fit(blobs[0])
    projections = cdc._outputs(blobs[0], "all_projections")[0]
    # Head 0 is now the kept head: its rows were swapped with those of the head
    # selected, so undo the swap to get the heads in their training order.
    order = list(range(4))
    order[0], order[cdc.selected_head_] = order[cdc.selected_head_], order[0]
    labels = [projections[:, 3 * h : 3 * h + 3].argmax(axis=1) for h in order]
    agreement = [
        np.mean([adjusted_rand_score(labels[a], labels[b]) for b in range(4) if b != a])
        for a in range(4)
    ]
    np.testing.assert_allclose(cdc.head_agreement_, agreement, atol=1e-12)
    assert cdc.selected_head_ == int(np.argmax(agreement))


def test_ensemble_refits_the_kept_head_to_the_heads_joint_partition(blobs):
    # Check that head_selection="ensemble" trains exactly as "loss" does, then
    # replaces the kept head (head 0) by one that predicts the k-means partition
    # of the heads' concatenated probabilities, and leaves the other heads as
    # they were.
    import torch
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    X = blobs[0]
    params = {**TINY, "n_cluster_heads": 4, "max_epochs": 5}
    by_loss = CDCClusterer(**params, head_selection="loss").fit(X)
    ensemble = CDCClusterer(**params, head_selection="ensemble").fit(X)
    assert ensemble.selected_head_ == by_loss.selected_head_
    before = by_loss._outputs(X, "all_projections")[0]
    after = ensemble._outputs(X, "all_projections")[0]
    np.testing.assert_array_equal(after[:, 3:], before[:, 3:])
    assert not np.array_equal(after[:, :3], before[:, :3])
    clusters = torch.nn.functional.normalize(
        torch.from_numpy(before[:, :12]).unflatten(1, (4, 3)), dim=-1
    )
    proba = torch.softmax(clusters / ENSEMBLE_TEMPERATURE, -1)
    joint = KMeans(3, n_init=10, random_state=0).fit_predict(proba.flatten(1))
    assert adjusted_rand_score(joint, ensemble.labels_) > 0.9
    np.testing.assert_array_equal(ensemble.predict(X), ensemble.labels_)


def test_auto_head_selection_depends_on_what_the_heads_train_on(blobs, shape_images):
    # Check that head_selection="auto" refits to the ensemble on feature vectors
    # and keeps the lowest-loss head on images.
    params = {**TINY, "n_cluster_heads": 3, "max_epochs": 2}
    for X, selection in ((blobs[0], "ensemble"), (shape_images[0], "loss")):
        auto = CDCClusterer(**params).fit(X)
        chosen = CDCClusterer(**params, head_selection=selection).fit(X)
        np.testing.assert_array_equal(auto.predict_proba(X), chosen.predict_proba(X))


def test_ensemble_with_two_clusters(blobs):
    # Check the binary case: a binary logistic regression holds one logit only.
    X = blobs[0][blobs[1] < 2]
    cdc = CDCClusterer(
        **{**TINY, "n_clusters": 2}, n_cluster_heads=3, head_selection="ensemble"
    ).fit(X)
    assert set(cdc.labels_) == {0, 1}
    np.testing.assert_array_equal(cdc.predict(X), cdc.labels_)


def test_select_head_moves_the_head_first():
    # Check that CDCModel.select_head makes the chosen head's outputs the ones of
    # the first head, and keeps every head.
    import torch

    from deepclust.models import CDCModel, InputScaler

    torch.manual_seed(0)
    model = CDCModel(
        torch.nn.Identity(),
        4,
        InputScaler(4, image=False),
        n_clusters=3,
        instance_dim=2,
        n_heads=3,
    ).eval()
    x = torch.randn(5, 4)
    before = model(x, "all_projections")
    model.select_head(2)
    after = model(x, "all_projections")
    torch.testing.assert_close(after[:, :3], before[:, 6:9])
    torch.testing.assert_close(after[:, 6:9], before[:, :3])
    torch.testing.assert_close(after[:, 9:], before[:, 9:])
    torch.testing.assert_close(
        model(x, "projection"), torch.cat([before[:, 6:9], before[:, 9:]], dim=1)
    )


def test_neighbours_are_mined_and_used(blobs):
    # Check that neighbour targets start after 30 % of the epochs: the bank is
    # mined, holds each sample's nearest samples in z^n, and changes the cluster
    # loss; neighbor_weight=0 trains without a bank.
    params = {**TINY, "max_epochs": 4, "n_neighbors": 3}
    cdc = CDCClusterer(**params).fit(blobs[0])
    bank = cdc.net_.criterion_.neighbors
    assert bool(bank.ready) and bank.neighbors.shape == (60, 3)
    rows = np.arange(60)[:, None]
    assert not (bank.neighbors.numpy() == rows).any()
    plain = CDCClusterer(**params, neighbor_weight=0.0).fit(blobs[0])
    assert plain.net_.criterion_.neighbors is None
    late = lambda est: est.history_[-1, "batches", :, "cluster_loss"]  # noqa: E731
    assert not np.allclose(late(cdc), late(plain))
    assert cdc.training_config_["neighbor_start_epoch"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_empty_cluster_after_short_trainings(seed):
    # Check that with n_samples >= 10 * n_clusters no cluster is left empty,
    # even after one or two epochs, and that predict agrees with labels_ (the
    # balancing bias is part of the model).
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=200, centers=5, n_features=8, random_state=0)
    for epochs in (1, 2):
        cdc = CDCClusterer(n_clusters=10, max_epochs=epochs, random_state=seed).fit(X)
        assert (cdc.cluster_sizes_ > 0).all(), cdc.cluster_sizes_
        np.testing.assert_array_equal(cdc.predict(X), cdc.labels_)


def test_check_clustering_at_a_short_budget():
    # Check scikit-learn's check_clustering (consecutive labels from 0, ARI > 0.4)
    # with the short budget that left clusters empty before.
    from sklearn.utils.estimator_checks import check_clustering

    for seed in range(3):
        check_clustering(
            "CDCClusterer",
            CDCClusterer(n_clusters=4, max_epochs=2, batch_size=32, random_state=seed),
        )
