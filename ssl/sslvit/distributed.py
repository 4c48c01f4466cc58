"""Collectives for contrastive losses whose negatives come from every device."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
