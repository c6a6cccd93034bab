"""Worker of tests/test_distributed.py, run by torchrun in every process.

    python -m torch.distributed.run --standalone --nproc-per-node=2 \
        tests/distributed_worker.py SCENARIO OUT_DIR

Scenarios:

- ``parity``: one training step of CD and CDC (losses, Sinkhorn codes and DDP
  gradients) on this process's half of a fixed batch; process 0 saves them.
- ``fit``: fit CD on tabular data and CDC on a folder of PNGs with an unreadable
  file (checkpoints every epoch); every process saves its fitted state.
- ``fit-killed``: the CDC fit of ``fit``, killed after epoch 2 in every process.
- ``resume``: the CDC fit of ``fit`` resumed from the killed run's checkpoint.

The test compares the files with one-process results.
"""

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from skorch.callbacks import Callback

from deepclust import CDCClusterer, ContrastiveDisentangler, distributed
from deepclust.losses import CDCLoss, CDLoss
from deepclust.models import build_model

# A fixed batch (shared with the test, which computes the one-process reference).
PARITY_BATCH = 12
PARITY_FEATURES = 6


def parity_data():
    """Unit-range input of the parity step and its two deterministic views."""
    rng = np.random.default_rng(0)
    unit = torch.from_numpy(
        rng.normal(size=(PARITY_BATCH, PARITY_FEATURES)).astype(np.float32)
    )
    return unit, torch.tanh(unit) * 1.5, unit.flip(1) * 0.8 + 0.1


def parity_model(family):
    heads = (
        {"projection_dim": 4, "n_heads": 5}
        if family == "cd"
        else {"n_clusters": 3, "instance_dim": 4}
    )
    torch.manual_seed(0)
    return build_model(
        {
            "family": family,
            "backbone": "mlp",
            "in_channels": 3,
            "image_size": None,
            "n_features": PARITY_FEATURES,
            "stem": "auto",
            "backbone_weights": None,
            "freeze_backbone": False,
            "heads": heads,
        }
    )


def parity_step(family, model, view1, view2, gather):
    """Loss, its parts and (CDC) the Sinkhorn codes of one step; runs backward."""
    if family == "cd":
        loss_function = CDLoss(gather_distributed=gather)
        z1, y1 = model(view1, ("projection", "heads"))
        z2, y2 = model(view2, ("projection", "heads"))
        loss, parts = loss_function(z1, z2, y1, y2)
        codes = None
    else:
        loss_function = CDCLoss(3, gather_distributed=gather)
        p1, p2 = model(view1, "projection"), model(view2, "projection")
        loss, parts = loss_function(p1, p2)
        from deepclust.heads import split_projection
        from deepclust.losses import sinkhorn

        codes = sinkhorn(split_projection(p1, 3)[0], gather_distributed=gather)
    loss.backward()
    return loss, parts, codes


def float_buffers(model):
    """The BatchNorm running statistics of ``model``, concatenated."""
    return torch.cat(
        [b.flatten() for b in model.buffers() if b.is_floating_point()]
    ).numpy()


def run_parity(out):
    rank, world = dist.get_rank(), dist.get_world_size()
    _, view1, view2 = parity_data()
    rows = torch.tensor_split(torch.arange(PARITY_BATCH), world)[rank]
    for family in ("cd", "cdc"):
        model = distributed.synchronize_batchnorm(
            parity_model(family), torch.device("cpu")
        )
        ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
        loss, parts, codes = parity_step(family, ddp, view1[rows], view2[rows], True)
        mean = distributed.all_reduce_mean(torch.stack([loss, *parts.values()]))
        gathered_codes = None
        if codes is not None:
            gathered_codes = distributed.gather_rows(codes)[0]
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        everyone = [None] * world
        dist.all_gather_object(everyone, grads.numpy())
        if rank == 0:
            np.savez(
                out / f"parity_{family}.npz",
                loss=mean.numpy(),
                grads=np.stack(everyone),
                codes=np.zeros(0) if gathered_codes is None else gathered_codes,
                buffers=float_buffers(model),
            )


class KillAfterEpoch(Callback):
    """Stop the process hard at the end of an epoch (after its checkpoint)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.epoch:
            dist.barrier()
            os._exit(3)


def cdc_fit(folder, checkpoints, **params):
    return CDCClusterer(
        n_clusters=3,
        instance_dim=4,
        max_epochs=4,
        batch_size=6,
        on_error="skip",
        checkpoint_dir=checkpoints,
        random_state=0,
        **params,
    ).fit(folder)


def save_state(estimator, path, X):
    weights = torch.cat(
        [t.flatten().float() for t in estimator.net_.module_.state_dict().values()]
    )
    state = {"weights": weights.numpy(), "transform": estimator.transform(X)}
    for name in ("labels_", "skipped_indices_", "cluster_sizes_"):
        if hasattr(estimator, name):
            state[name] = getattr(estimator, name)
    state["n_processes"] = estimator.n_processes_
    state["train_loss"] = np.array([e["train_loss"] for e in estimator.history_])
    np.savez(path, **state)


def main():
    scenario, out = sys.argv[1], Path(sys.argv[2])
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if scenario == "parity":
        dist.init_process_group("gloo")
        run_parity(out)
    elif scenario == "fit":
        tabular = np.load(out / "tabular.npy")
        cd = ContrastiveDisentangler(
            n_heads=4, projection_dim=4, max_epochs=3, batch_size=8, random_state=0
        ).fit(tabular)
        save_state(cd, out / f"cd_rank{rank}.npz", tabular)
        cdc = cdc_fit(out / "images", out / "checkpoints")
        save_state(cdc, out / f"cdc_rank{rank}.npz", out / "images")
        cdc.save(out / "saved")
    elif scenario == "fit-killed":
        cdc_fit(out / "images", out / "killed", callbacks=[KillAfterEpoch(2)])
    elif scenario == "resume":
        cdc = cdc_fit(out / "images", out / "killed", resume=True)
        save_state(cdc, out / f"resumed_rank{rank}.npz", out / "images")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
