"""Testing for the fast training path: device-resident batches, precision, streaming."""

import numpy as np
import pytest
import torch
from PIL import Image
from skorch.callbacks import Callback

import deepclust.estimators._net as net_module
from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.estimators._net import ContrastiveNet, DeviceBatches

TINY_CD = {
    "backbone": "small_cnn",
    "n_heads": 4,
    "projection_dim": 4,
    "max_epochs": 1,
    "batch_size": 8,
    "random_state": 0,
}


class _ForwardRecorder(Callback):
    """Record the autocast state and layout at each training forward of the backbone."""

    def __init__(self, device_type="cpu"):
        self.device_type = device_type

    def initialize(self):
        self.states_ = []
        return self

    def on_train_begin(self, net, **kwargs):
        def record(module, args, output):
            self.states_.append(
                {
                    "autocast": torch.is_autocast_enabled(self.device_type),
                    "autocast_dtype": torch.get_autocast_dtype(self.device_type),
                    "channels_last": args[0].is_contiguous(
                        memory_format=torch.channels_last
                    ),
                }
            )

        self.handle_ = net.unwrapped_module().backbone.register_forward_hook(record)

    def on_train_end(self, net, **kwargs):
        self.handle_.remove()


def _batches(n_samples, batch_size, seed):
    data = torch.arange(n_samples) * 10
    return DeviceBatches(data, batch_size, torch.Generator().manual_seed(seed))


def _epoch(batches):
    return [(values.clone(), index.clone()) for values, index in batches]


def test_device_batches_cover_every_sample_once():
    # Check that one epoch of device batches yields every sample exactly once,
    # each with its own index, in batches of batch_size.
    epoch = _epoch(_batches(12, 4, seed=0))
    assert [len(index) for _, index in epoch] == [4, 4, 4]
    indices = torch.cat([index for _, index in epoch])
    assert sorted(indices.tolist()) == list(range(12))
    for values, index in epoch:
        torch.testing.assert_close(values, index * 10)


def test_device_batches_skip_trailing_single_sample():
    # Check that a trailing batch of one sample (which cannot be contrasted and
    # breaks BatchNorm) is skipped, while a trailing batch of two is kept.
    sizes = [len(index) for _, index in _epoch(_batches(13, 4, seed=0))]
    assert sizes == [4, 4, 4]
    sizes = [len(index) for _, index in _epoch(_batches(14, 4, seed=0))]
    assert sizes == [4, 4, 4, 2]


def test_device_batches_shuffle_per_epoch_and_seed():
    # Check that successive epochs come in different orders and that the
    # sequence of orders depends only on the seed.
    first = _batches(32, 8, seed=0)
    orders = [torch.cat([index for _, index in _epoch(first)]) for _ in range(2)]
    assert not torch.equal(orders[0], orders[1])
    again = _batches(32, 8, seed=0)
    for order in orders:
        assert torch.equal(torch.cat([index for _, index in _epoch(again)]), order)
    other = _batches(32, 8, seed=1)
    assert not torch.equal(torch.cat([index for _, index in _epoch(other)]), orders[0])


def test_bf16_on_cpu_trains_under_autocast(shape_images):
    # Check that precision="bf16" on the CPU runs the forward passes under bf16
    # autocast and trains with a finite loss.
    images, _ = shape_images
    recorder = _ForwardRecorder("cpu")
    cd = ContrastiveDisentangler(
        precision="bf16", device="cpu", callbacks=[recorder], **TINY_CD
    ).fit(images)
    assert cd.net_.precision_dtype is torch.bfloat16
    assert len(recorder.states_) == 2 * 3  # two views per batch, 24 images / 8
    assert all(
        s["autocast"] and s["autocast_dtype"] is torch.bfloat16
        for s in recorder.states_
    )
    assert np.isfinite(cd.history_[:, "train_loss"]).all()
    assert np.isfinite(cd.transform(images)).all()


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_fp32_on_cpu_has_no_autocast(shape_images, precision):
    # Check that precision="fp32", and "auto" on the CPU, train without autocast,
    # and that images train channels-last there too (faster oneDNN kernels).
    images, _ = shape_images
    recorder = _ForwardRecorder("cpu")
    cd = ContrastiveDisentangler(
        precision=precision, device="cpu", callbacks=[recorder], **TINY_CD
    ).fit(images)
    assert cd.net_.precision_dtype is None
    assert recorder.states_
    assert not any(s["autocast"] for s in recorder.states_)
    assert cd.net_.criterion_.channels_last
    assert all(s["channels_last"] for s in recorder.states_)
    assert np.isfinite(cd.history_[:, "train_loss"]).all()


@pytest.mark.parametrize("estimator", [ContrastiveDisentangler(), CDCClusterer()])
def test_compile_is_off_by_default(estimator):
    # Check that torch.compile is opt-in: compile defaults to False and a
    # default fit keeps the plain module.
    assert estimator.get_params()["compile"] is False


def test_default_fit_module_is_not_compiled(shape_images):
    # Check that a fit with compile left at its default trains the plain module,
    # not a torch.compile wrapper.
    images, _ = shape_images
    cd = ContrastiveDisentangler(device="cpu", **TINY_CD).fit(images)
    assert cd.net_.compile is False
    assert cd.net_.module_ is cd.net_.unwrapped_module()
    assert not isinstance(cd.net_.module_, torch._dynamo.eval_frame.OptimizedModule)


# One epoch may leave a cluster empty, which only warns.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_streaming_dataloader_path_trains(shape_images, tmp_path, monkeypatch):
    # Check that inputs too large to materialise are streamed through a
    # DataLoader (here from image files, in the main process) and still train a
    # model that clusters them.
    images, _ = shape_images
    paths = []
    for i, image in enumerate(images[:16]):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    monkeypatch.setattr(net_module, "_MATERIALIZE_BYTES", 0)
    iterators = []
    get_iterator = ContrastiveNet.get_iterator

    def spy(net, dataset, training=False):
        iterator = get_iterator(net, dataset, training=training)
        if training:
            iterators.append(iterator)
        return iterator

    monkeypatch.setattr(ContrastiveNet, "get_iterator", spy)
    cdc = CDCClusterer(
        2,
        backbone="small_cnn",
        instance_dim=4,
        max_epochs=1,
        batch_size=8,
        num_workers=0,
        device="cpu",
        random_state=0,
    )
    cdc.fit(paths)
    assert len(iterators) == 1
    assert isinstance(iterators[0], torch.utils.data.DataLoader)
    assert iterators[0].num_workers == 0
    assert [b["train_batch_size"] for b in cdc.history_[-1, "batches"]] == [8, 8]
    assert np.isfinite(cdc.history_[:, "train_loss"]).all()
    assert cdc.labels_.shape == (16,)
    assert cdc.predict(paths[:3]).shape == (3,)


@pytest.mark.gpu
def test_cuda_fit_uses_bf16_and_channels_last(shape_images):
    # Check that on CUDA the default precision is bf16 autocast, the model and
    # its inputs are channels_last, the model lives on the GPU and the loss is finite.
    images, _ = shape_images
    recorder = _ForwardRecorder("cuda")
    cd = ContrastiveDisentangler(device="cuda", callbacks=[recorder], **TINY_CD).fit(
        images
    )
    model = cd.net_.unwrapped_module()
    assert cd.net_.precision_dtype is torch.bfloat16
    assert all(p.is_cuda for p in model.parameters())
    assert all(
        p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
        if p.ndim == 4
    )
    assert recorder.states_
    assert all(
        s["autocast"] and s["autocast_dtype"] is torch.bfloat16 and s["channels_last"]
        for s in recorder.states_
    )
    assert np.isfinite(cd.history_[:, "train_loss"]).all()
    assert np.isfinite(cd.transform(images)).all()
