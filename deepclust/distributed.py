"""Training on several processes with torch.distributed: the global batch.

deepclust trains with PyTorch's DistributedDataParallel (DDP) when the script
runs under a launcher such as ``torchrun`` or ``accelerate launch`` (see
``docs/scaling.md``). DDP averages the gradients of the processes; the helpers
here make the contrastive losses see the *global* batch, so that a run on W
processes with per-process batch B trains like one process with batch W * B:

- :func:`gather_rows` concatenates a tensor of every process, in rank order, with
  gradients flowing back to the process that owns each row (summed over the
  processes, as DDP's averaging expects); processes may hold different numbers
  of rows;
- :func:`local_weight` rescales a mean over this process's rows so that the mean
  over processes of the losses equals the mean over the global batch, which is
  what DDP's gradient averaging then optimises;
- :func:`synchronize_batchnorm` makes BatchNorm use global batch statistics:
  ``torch.nn.SyncBatchNorm`` on GPUs and, since that one refuses CPU tensors,
  :class:`GlobalBatchNorm` (the same computation with a differentiable
  all-reduce) on CPUs with the gloo backend.

Every function is a no-op returning its input when no process group with more
than one process is running, so the losses work unchanged in one process.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GlobalBatchNorm",
    "gather_rows",
    "is_distributed",
    "launcher_world_size",
    "local_weight",
    "rank",
    "restore_batchnorm",
    "synchronize_batchnorm",
    "world_size",
]


def is_distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes of the running group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the running group (0 without one)."""
    return dist.get_rank() if is_distributed() else 0


def launcher_world_size() -> int:
    """World size announced by a launcher (``torchrun``, ``accelerate launch``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_environment(device: torch.device) -> None:
    """Join the process group described by the launcher's environment variables.

    NCCL for CUDA devices, gloo otherwise; nothing happens when a group already
    runs (the user may have created one).
    """
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)


def gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The rows of every process, concatenated in rank order, differentiably.

    Parameters
    ----------
    tensor : Tensor of shape (n_local, ...)

    Returns
    -------
    rows : Tensor of shape (sum of n_local, ...)
        ``tensor`` itself without a process group.
    sizes : list of int
        Number of rows of each process.

    Examples
    --------
    >>> import torch
    >>> rows, sizes = gather_rows(torch.ones(3, 2))
    >>> rows.shape, sizes
    (torch.Size([3, 2]), [3])
    """
    if not is_distributed():
        return tensor, [len(tensor)]
    sizes = _all_sizes(len(tensor), tensor.device)
    longest = max(sizes)
    padded = F.pad(tensor, (0,) * (2 * (tensor.dim() - 1)) + (0, longest - len(tensor)))
    parts = _AllGather.apply(padded)
    rows = torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])
    return rows, sizes


# torch.distributed.nn.functional's differentiable collectives are deprecated
# (torch 2.14) in favour of private functions; these two are small enough to
# own: all-gather whose backward sums the gradient of each process's slice over
# the processes (as lightly's and solo-learn's GatherLayer), and a sum whose
# backward sums the gradients the same way.
class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        ctx.rank = dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        grad = torch.stack(grads)
        dist.all_reduce(grad)
        return grad[ctx.rank]


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _all_sizes(n_local: int, device) -> list[int]:
    size = torch.tensor([n_local], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def local_weight(n_local: int, device=None) -> float:
    """Weight of a mean over this process's ``n_local`` rows: n_local * W / N.

    With it, the average over the W processes of the weighted local means is the
    mean over all N rows, even when the processes hold different numbers of rows.
    """
    if not is_distributed():
        return 1.0
    total = torch.tensor([float(n_local)], device=device)
    dist.all_reduce(total)
    return n_local * dist.get_world_size() / float(total)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over the processes (a copy; no gradient)."""
    tensor = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with statistics over the batches of all processes, on any device.

    The per-channel sums, sums of squares and counts of every process are added
    with a differentiable all-reduce, so the output and its gradients equal those
    of one BatchNorm over the concatenated batches. ``torch.nn.SyncBatchNorm``
    computes the same but accepts only GPU tensors; deepclust uses it there and
    this class on CPUs (gloo). In eval mode, or without a process group, it is a
    plain BatchNorm. Its parameters and buffers are those of BatchNorm, so state
    dicts are interchangeable.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = x.new_tensor([x.numel() / x.shape[1]])
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = _AllReduceSum.apply(stats)
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        variance = stats[channels : 2 * channels] / total - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum
                if momentum is None:  # cumulative moving average, as BatchNorm
                    momentum = 1.0 / float(self.num_batches_tracked)
                unbiased = variance * total / (total - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def synchronize_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm of ``module`` by a synchronised one, in place.

    ``torch.nn.SyncBatchNorm`` on CUDA devices, :class:`GlobalBatchNorm`
    elsewhere; parameters and buffers are kept, and :func:`restore_batchnorm`
    puts the original classes back.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, (nn.SyncBatchNorm, GlobalBatchNorm)
        ):
            synced = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
            setattr(module, name, _copy_batchnorm(child, synced))
        else:
            synchronize_batchnorm(child, device)
    return module


def restore_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`synchronize_batchnorm`, in place."""
    for name, child in list(module.named_children()):
        original = getattr(child, "_unsynchronized_class", None)
        if original is not None:
            setattr(module, name, _copy_batchnorm(child, original))
        else:
            restore_batchnorm(child)
    return module


def _copy_batchnorm(bn, new_class):
    copy = new_class(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats
    )
    copy.load_state_dict(bn.state_dict())
    copy.train(bn.training)
    for new, old in zip(copy.parameters(), bn.parameters(), strict=True):
        new.requires_grad_(old.requires_grad)
    state = list(bn.state_dict().values())
    if state:
        copy.to(state[0].device)
    if new_class in (nn.SyncBatchNorm, GlobalBatchNorm):
        copy._unsynchronized_class = type(bn)
    return copy
