"""One process per device: DDP set up from torchrun's environment, and the collectives training needs.

torchrun (``python -m torch.distributed.run``) sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without
them this is a plain single-process run. GPUs talk NCCL, CPUs gloo. Only rank 0 logs and writes files
(`DistContext.is_main`); every other rank computes and takes part in the collectives.

Identical results to one process (up to floating point) rest on three things, all here or in train.py:

* the *global* batch is fixed and split evenly (`ResumableDistributedSampler` + ``batch_size / world``),
* losses are sums over the local batch divided by the local batch size, so DDP's gradient average is
  exactly the global batch mean,
* BatchNorm statistics are computed over the global batch: ``nn.SyncBatchNorm`` on GPUs and
  `CrossProcessBatchNorm2d` (below) on CPUs, where PyTorch's SyncBatchNorm refuses to run.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler


@dataclass
class DistContext:
    """Where this process stands: its rank, how many there are, its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    distributed: bool = False  # a process group exists (launched by torchrun)
    batchnorm_group: Any = None  # the group CrossProcessBatchNorm2d reduces over

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto", timeout_minutes: int = 120) -> DistContext:
    """Initialise the process group when launched by torchrun, pick this process's device.

    device: "auto" (a GPU if there is one), "cpu" or "cuda".
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        from ACATLogic.errors import ACATInputError

        raise ACATInputError("device=cuda was asked for but no CUDA GPU is available; use device=cpu or auto")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                **({"device_id": dev} if use_cuda else {}))
    # BatchNorm reductions get a group of their own, so they never queue behind DDP's gradient buckets
    bn_group = dist.new_group(backend="gloo") if not use_cuda else None
    return DistContext(rank, local_rank, world, dev, True, bn_group)


def report_error(exc: BaseException, ctx, *, stage_error: bool) -> None:
    """Print a bad-input or stage error once: by rank 0 for a stage error every rank raises together,
    by whichever rank saw it otherwise (prefixed with its rank)."""
    if ctx is None or ctx.is_main or not stage_error:
        prefix = "" if ctx is None or ctx.is_main else f"[rank {ctx.rank}] "
        print(f"{prefix}error: {exc}", file=sys.stderr, flush=True)


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The element-wise sum over processes (a copy; ``t`` itself is untouched)."""
    t = t.detach().clone()
    if ctx.distributed:
        dist.all_reduce(t)
    return t


def all_gather_objects(obj: Any, ctx: DistContext) -> list:
    """Every rank's ``obj``, in rank order (small picklable things: per-scan outputs, RNG states)."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (rank 0 decides, e.g. which saliency chunks remain)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------------
# sampling


class ResumableDistributedSampler(DistributedSampler):
    """`DistributedSampler` that can start an epoch after ``start_batch`` batches (mid-epoch resume).

    The epoch's order depends on (seed, epoch) only. With ``drop_last=True`` and a per-process batch
    b = B / world, process r's k-th batch holds ``perm[k*B + r + world*j]`` for j < b: together the
    processes' k-th batches are exactly ``perm[k*B:(k+1)*B]``, the k-th batch of a one-process run.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int, batch_size: int,
                 shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.batch_size = int(batch_size)  # per process
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch)
        self.start_batch = int(start_batch)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start_batch * self.batch_size)

    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size


# ---------------------------------------------------------------------------------------------------
# BatchNorm over the global batch on CPU


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: the backward of a sum over processes is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:  # noqa: D401
        ctx.group = group
        out = tensor.detach().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.detach().clone().contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with training statistics over every process's batch (gloo; CPU DDP).

    x: (N, C, H, W) -> same shape. Two reductions (mean, then the centred second moment, as PyTorch's own
    two-pass batch norm) so the result matches one process holding the global batch. Eval mode, or no
    process group, is plain BatchNorm2d. Parameters, buffers and state-dict names are BatchNorm2d's.
    """

    process_group: Optional[Any] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count_local = x.new_tensor([x.numel() // x.shape[1]], dtype=x.dtype)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count_local]), self.process_group)
        count = totals[-1].detach()
        mean = totals[:-1] / count
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply((centred * centred).sum(dims), self.process_group) / count
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y


def convert_batchnorm(module: nn.Module, ctx: DistContext) -> nn.Module:
    """Swap every BatchNorm2d for its global-batch version (SyncBatchNorm on GPU), keeping its tensors."""
    if not ctx.distributed or ctx.world_size == 1:
        return module
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)

    def convert(child: nn.Module) -> nn.Module:
        if type(child) is nn.BatchNorm2d:
            new = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            new.process_group = ctx.batchnorm_group
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            return new
        for name, grandchild in child.named_children():
            child.add_module(name, convert(grandchild))
        return child

    return convert(module)
