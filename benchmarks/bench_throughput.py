"""Training throughput of deepclust against a reference-style pipeline on one device.

For each configuration (backbone @ image size), method (CD, CDC) and batch size,
two training paths run on the same synthetic uint8 images, the same model and the
same augmentations:

* ``deepclust``: ``ContrastiveDisentangler(...).fit`` / ``CDCClusterer(...).fit``
  with ``max_epochs=1`` on exactly ``(warmup + steps) * batch`` images, so the
  benchmark measures what users get: the estimator's data path (the whole uint8
  array on the device when it fits), on-device batched augmentation of both
  views, its precision (``"auto"``: bf16 autocast on CUDA, fp32 on CPU) and
  memory format (channels_last on CUDA). A skorch callback times the optimiser
  steps that follow the warm-up steps.
* ``reference``: the way the reference CD code trains: per-image PIL transforms
  (:func:`deepclust.augment.simclr_pil_transform`, two views per image) in
  ``--workers`` DataLoader worker processes, fp32, NCHW, one Adam step and one
  ``loss.item()`` per batch, on a copy of the same network and the same loss.

Each row gives source images per second (an image counts once; both of its views
are processed), the achieved TFLOP/s (FLOPs of the network's forward and backward
on both views, counted once with :class:`torch.utils.flop_counter.FlopCounterMode`,
times steps per second; augmentation, loss and optimiser are not counted), the
peak GPU memory, and the deepclust / reference speed ratio.

    python benchmarks/bench_throughput.py   # CUDA if available, else a tiny CPU run
    python benchmarks/bench_throughput.py --device cuda --configs resnet34@224 \
        --batch-sizes 256
    python benchmarks/bench_throughput.py --device cpu --steps 3 --json cpu.json

A configuration is ``BACKBONE@SIZE`` with BACKBONE in resnet18, resnet34,
resnet50, small_cnn; ResNets use the ImageNet stem above 64 px and the CIFAR stem
up to 64 px (deepclust's "auto" rule), so ``resnet34@224`` and ``resnet18@32`` are
the paper's ImageNet-10 and CIFAR settings.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import time
import warnings

import numpy as np
import torch
from PIL import Image
from skorch.callbacks import Callback
from torch.utils.flop_counter import FlopCounterMode

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.augment import simclr_pil_transform

_BACKBONES = ("resnet18", "resnet34", "resnet50", "small_cnn")
_METHODS = {"cd": ContrastiveDisentangler, "cdc": CDCClusterer}
# The targets on one H100: (min source images/s, min deepclust/reference ratio).
_H100_TARGETS = {"resnet34@224": (3000.0, 5.0), "resnet18@32": (15000.0, None)}
_GPU_DEFAULTS = {
    "configs": ["resnet34@224", "resnet18@32"],
    "batch_sizes": [128, 256],
    "steps": 50,
    "warmup": 10,
}
# Small enough for the whole run (2 methods x 2 paths) to take a minute on 2 cores.
_CPU_DEFAULTS = {
    "configs": ["resnet18@32"],
    "batch_sizes": [16],
    "steps": 4,
    "warmup": 1,
}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _parse_config(text: str) -> dict:
    backbone, _, size = text.partition("@")
    if backbone not in _BACKBONES or not size.isdigit() or int(size) < 8:
        raise argparse.ArgumentTypeError(
            f"configuration {text!r} must be BACKBONE@SIZE with BACKBONE in "
            f"{', '.join(_BACKBONES)} and SIZE an int >= 8, e.g. resnet34@224."
        )
    size = int(size)
    stem = "auto" if backbone == "small_cnn" else ("imagenet" if size > 64 else "cifar")
    return {"name": text, "backbone": backbone, "stem": stem, "image_size": size}


class _StepTimer(Callback):
    """Wall time of the training steps after the first ``warmup`` ones.

    The clock is read, after a device synchronisation, only at the end of step
    ``warmup`` and of step ``warmup + steps``: synchronising at every step would
    add host-device round trips that the estimator does not make.
    """

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup = warmup
        self.steps = steps
        self.device = device

    def initialize(self):
        self.n_batches_ = 0
        self.start_ = None
        self.stop_ = None
        return self

    def on_batch_end(self, net, training=False, **kwargs):
        if not training:
            return
        self.n_batches_ += 1
        if self.n_batches_ in (self.warmup, self.warmup + self.steps):
            _synchronize(self.device)
            now = time.perf_counter()
            if self.n_batches_ == self.warmup:
                self.start_ = now
            else:
                self.stop_ = now


def _reset_peak_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _training_flops(model: torch.nn.Module, batch_size: int, image_size: int) -> int:
    """FLOPs of forward + backward of ``model`` on two views of a batch.

    Counted on a copy on the meta device: shapes only, no memory and no compute,
    so counting a ResNet-34 at 224 px costs the same on any machine.
    """
    meta_model = copy.deepcopy(model).to(
        device="meta", memory_format=torch.contiguous_format
    )
    meta_model.train()
    views = torch.empty(batch_size, 3, image_size, image_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        outputs = []
        for _ in range(2):
            output = meta_model(views)
            outputs.extend(output if isinstance(output, tuple) else (output,))
        torch.stack([output.float().sum() for output in outputs]).sum().backward()
    return counter.get_total_flops()


def _run_deepclust(
    method: str,
    config: dict,
    batch_size: int,
    images: np.ndarray,
    args,
    device: torch.device,
):
    """Fit the estimator on ``images`` (one epoch of warmup + steps batches), timed."""
    timer = _StepTimer(args.warmup, args.steps, device)
    estimator = _METHODS[method](
        backbone=config["backbone"],
        stem=config["stem"],
        batch_size=batch_size,
        max_epochs=1,
        device=str(device),
        precision=args.precision,
        compile=args.compile,
        callbacks=[("step_timer", timer)],
        random_state=0,
    )
    _reset_peak_memory(device)
    with warnings.catch_warnings():
        # One epoch on noise leaves CDC clusters empty: irrelevant for speed.
        warnings.simplefilter("ignore")
        estimator.fit(images)
    elapsed = timer.stop_ - timer.start_
    result = {"seconds": elapsed, "peak_memory_gib": _peak_memory_gib(device)}
    net = estimator.net_
    objective = getattr(net.criterion_, "_orig_mod", net.criterion_)
    # CPU copies: the reference path gets a fresh NCHW fp32 network of the same
    # architecture, and the estimator's device memory is freed before it runs.
    parts = {
        "model": copy.deepcopy(net.unwrapped_module()).to(
            device="cpu", memory_format=torch.contiguous_format
        ),
        "objective": copy.deepcopy(objective).to("cpu"),
    }
    del estimator, net, objective
    return result, parts


class _PILTwoViews(torch.utils.data.Dataset):
    """Two independently transformed views of each image, decoded to PIL per item."""

    def __init__(self, images: np.ndarray, transform):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index])
        return self.transform(image), self.transform(image)


def _run_reference(
    parts: dict, batch_size: int, images: np.ndarray, args, device: torch.device
) -> dict:
    """Reference-style training: PIL views in worker processes, fp32, NCHW, Adam."""
    model = parts["model"].to(device)
    objective = parts["objective"].to(device)
    augment = objective.augment
    transform = simclr_pil_transform(
        augment.output_size,
        crop_scale=augment.crop_scale,
        jitter_strength=augment.jitter_strength,
        jitter_p=augment.jitter_p,
        grayscale_p=augment.grayscale_p,
        blur_p=augment.blur_p,
        flip_p=augment.flip_p,
    )
    loader = torch.utils.data.DataLoader(
        _PILTwoViews(images, transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    model.train()
    _reset_peak_memory(device)
    start = stop = None
    for step, (view1, view2) in enumerate(loader, start=1):
        view1 = view1.to(device, non_blocking=True)
        view2 = view2.to(device, non_blocking=True)
        loss, _ = objective.compute(model, view1, view2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # the reference logs the loss of every step
        if step == args.warmup:
            _synchronize(device)
            start = time.perf_counter()
        elif step == args.warmup + args.steps:
            _synchronize(device)
            stop = time.perf_counter()
            break
    result = {"seconds": stop - start, "peak_memory_gib": _peak_memory_gib(device)}
    del model, objective, optimizer, loader
    return result


def _format(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_header() -> None:
    print(
        f"{'config':<14} {'method':<6} {'batch':>5} {'path':<10} {'images/s':>10} "
        f"{'TFLOP/s':>8} {'peak GiB':>8} {'ratio':>6}",
        flush=True,
    )


def _print_row(row: dict) -> None:
    print(
        f"{row['config']:<14} {row['method']:<6} {row['batch_size']:>5} "
        f"{row['path']:<10} "
        f"{row['images_per_s']:>10.1f} {row['tflops']:>8.3f} "
        f"{_format(row['peak_memory_gib'], '8.2f'):>8} "
        f"{_format(row.get('ratio'), '6.2f'):>6}",
        flush=True,
    )


def _row(config, method, batch_size, path, result, steps, flops):
    steps_per_s = steps / result["seconds"]
    return {
        "config": config["name"],
        "method": method,
        "batch_size": batch_size,
        "path": path,
        "images_per_s": batch_size * steps_per_s,
        "tflops": flops * steps_per_s / 1e12,
        "peak_memory_gib": result["peak_memory_gib"],
        "seconds": result["seconds"],
        "steps": steps,
        "flops_per_step": flops,
    }


def _print_targets(rows: list[dict]) -> None:
    """One line per deepclust row of a configuration with an H100 target."""
    for row in rows:
        if row["path"] != "deepclust" or row["config"] not in _H100_TARGETS:
            continue
        min_rate, min_ratio = _H100_TARGETS[row["config"]]
        met = row["images_per_s"] >= min_rate
        text = f">= {min_rate:.0f} images/s"
        if min_ratio is not None:
            met = met and row.get("ratio", 0.0) >= min_ratio
            text += f" and >= {min_ratio:.0f}x reference"
        print(
            f"H100 target {row['config']} {row['method']} batch {row['batch_size']} "
            f"({text}): {'met' if met else 'NOT met'}"
        )


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads"
    )


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default="auto",
        help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        type=_parse_config,
        default=None,
        help="BACKBONE@SIZE (GPU default: resnet34@224 resnet18@32; "
        "CPU default: resnet18@32)",
    )
    parser.add_argument(
        "--methods", nargs="+", default=list(_METHODS), choices=list(_METHODS)
    )
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=None,
        help="GPU default: 128 256; CPU default: 16",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed optimiser steps (GPU default 50, CPU default 4)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps before them (GPU default 10, CPU default 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers of the reference path (default 4 on "
        "GPU, half the CPU cores on CPU)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="precision of the deepclust path (the reference is fp32)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the deepclust network (compile time falls "
        "in the warm-up steps)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads of the main process (default: "
        "torch's choice); on a busy machine with few cores, 1 "
        "avoids the threads' spin-waits",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=["deepclust", "reference"],
        choices=["deepclust", "reference"],
        help="rows to report (the deepclust fit always runs: it "
        "builds the network the reference path trains)",
    )
    parser.add_argument(
        "--json",
        metavar="OUT",
        default=None,
        help="also write the results to this JSON file",
    )
    args = parser.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(
            f"--device {args.device!r} is not a torch device; use cpu, cuda or cuda:N."
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device!r} needs CUDA, which is not available here."
        )
    defaults = _GPU_DEFAULTS if device.type == "cuda" else _CPU_DEFAULTS
    if args.configs is None:
        args.configs = [_parse_config(text) for text in defaults["configs"]]
    for name in ("batch_sizes", "steps", "warmup"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.workers is None:
        args.workers = (
            4 if device.type == "cuda" else max(1, (os.cpu_count() or 2) // 2)
        )
    if min(args.batch_sizes) < 2:
        parser.error(f"--batch-sizes must all be >= 2, got {args.batch_sizes}.")
    if args.steps < 1 or args.warmup < 1:
        parser.error(
            f"--steps and --warmup must be >= 1, got {args.steps} and {args.warmup}."
        )
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}.")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}.")
    return args, device


def main(argv=None):
    args, device = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(
        f"device: {_device_description(device)}; torch {torch.__version__}; deepclust "
        f"precision={args.precision} (reference: fp32), compile={args.compile}; "
        f"{args.warmup} warm-up + {args.steps} timed steps; "
        f"reference workers={args.workers}"
    )
    if device.type == "cuda":
        print(
            f"cudnn.benchmark={torch.backends.cudnn.benchmark}, "
            f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"matmul precision={torch.get_float32_matmul_precision()}"
        )
    _print_header()
    rows = []
    rng = np.random.default_rng(0)
    for config in args.configs:
        size = config["image_size"]
        for batch_size in args.batch_sizes:
            n_images = batch_size * (args.warmup + args.steps)
            images = rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
            for method in args.methods:
                result, parts = _run_deepclust(
                    method, config, batch_size, images, args, device
                )
                flops = _training_flops(parts["model"], batch_size, size)
                pair = []
                if "deepclust" in args.paths:
                    pair.append(
                        _row(
                            config,
                            method,
                            batch_size,
                            "deepclust",
                            result,
                            args.steps,
                            flops,
                        )
                    )
                if "reference" in args.paths:
                    reference = _run_reference(parts, batch_size, images, args, device)
                    pair.append(
                        _row(
                            config,
                            method,
                            batch_size,
                            "reference",
                            reference,
                            args.steps,
                            flops,
                        )
                    )
                if len(pair) == 2:
                    pair[0]["ratio"] = pair[0]["images_per_s"] / pair[1]["images_per_s"]
                for row in pair:
                    _print_row(row)
                rows.extend(pair)
                del parts
            del images
    wall = time.perf_counter() - start
    print(f"total wall time: {wall:.1f} s")
    if device.type == "cuda":
        _print_targets(rows)
    if args.json:
        meta = {
            "device": _device_description(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "precision": args.precision,
            "compile": args.compile,
            "warmup": args.warmup,
            "steps": args.steps,
            "workers": args.workers,
            "wall_seconds": wall,
        }
        with open(args.json, "w") as file:
            json.dump({"meta": meta, "rows": rows}, file, indent=2)
    return rows


if __name__ == "__main__":
    main()
