"""Collectives: contrastive negatives from every device, and features gathered in dataset order.

Every function works in a single process too (no process group): it then returns its input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world_is_distributed() -> bool:
    return rank_and_world()[1] > 1


def comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU otherwise (gloo)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (e.g. a cache hit must be unanimous, or ranks would diverge)."""
    if not world_is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` [B, ...] of every process in rank order: -> ([W * B, ...], this process's row offset).

    The offset (``rank * B``) locates this process's own rows in the result, e.g. to index
    positives. Gradients flow back to every process: the backward of
    ``torch.distributed.nn.functional.all_gather`` sums, for each process's ``x``, the gradients
    that all processes' losses send to it (a plain ``all_gather`` would cut them off, and taking
    only the local slice of the gradient would drop the other processes' terms). DDP then averages
    parameter gradients, which gives the gradient of the mean loss over processes. Every process
    must pass the same B. Without an initialized process group (one device) ``x`` is returned as is.
    """
    if not world_is_distributed():
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


def gather_in_order(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``[n_r, ...]`` tensor in rank order; shards may differ in size (no padding kept)."""
    if not world_is_distributed():
        return local
    device = comm_device()
    local = local.to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=device))
    counts = [int(s.item()) for s in sizes]
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])
