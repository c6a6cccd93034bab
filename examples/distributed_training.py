"""
Training on several processes with torchrun
===========================================

Run this script with a launcher; every process runs all of it::

    torchrun --nproc-per-node=2 examples/distributed_training.py

On a CPU-only machine the processes talk through gloo; on GPUs the same command
uses NCCL, one GPU per process (``--nproc-per-node`` = number of GPUs). The
estimator notices the launcher (``distributed="auto"``): each process reads every
second image, the contrastive losses and the Sinkhorn codes use the global batch
of both processes, and both processes end with the same fitted model. Only
process 0 prints and saves.

This example is not executed when the documentation is built, since it needs a
launcher: run the command above to see its output. See :doc:`/scaling` for
launching on several machines and what is global and what is per process.
"""

import argparse
import time

import torch.distributed as dist

from deepclust import CDCClusterer
from deepclust.datasets import load_digits_images
from deepclust.metrics import clustering_scores

parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
parser.add_argument("--epochs", default="auto", help="training epochs (default: auto)")
parser.add_argument("--save", help="folder to save the model to (process 0 writes)")
args = parser.parse_args()

images, labels = load_digits_images()
start = time.perf_counter()
cdc = CDCClusterer(
    n_clusters=10,
    max_epochs=args.epochs if args.epochs == "auto" else int(args.epochs),
    random_state=0,
).fit(images)
seconds = time.perf_counter() - start

# Every process holds the same model and labels_; process 0 reports.
rank = dist.get_rank() if dist.is_initialized() else 0
if rank == 0:
    scores = clustering_scores(labels, cdc.labels_)
    print(
        f"{cdc.n_processes_} process(es), {cdc.n_epochs_} epochs in {seconds:.1f} s: "
        f"ACC {scores['acc']:.3f}  NMI {scores['nmi']:.3f}  ARI {scores['ari']:.3f}"
    )
if args.save:
    cdc.save(args.save)  # process 0 writes, the others return at once
if dist.is_initialized():
    dist.destroy_process_group()
