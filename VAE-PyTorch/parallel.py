"""Data-parallel training over several processes (torchrun), shared by the PyTorch folders.

This file is the same byte for byte in VAE-PyTorch, CDAE-PyTorch and SVAE-PyTorch
(tests/test_consistency.py checks it). Launched by torchrun (RANK, WORLD_SIZE and
LOCAL_RANK in the environment), `start` joins the process group: gloo on the CPU, nccl on
GPUs, each process on cuda:LOCAL_RANK. Launched plainly, there is no process group and
every function here is a no-op, so a plain run is exactly what it was.

What DistributedDataParallel does, written out: every process holds the same weights
(broadcast from rank 0), takes its share of each global batch (`shard`), back-propagates
its share of the batch's loss, and one all-reduce sums the gradients before every process
takes the same optimiser step. It is written out rather than wrapped in torch's
DistributedDataParallel because SVAE back-propagates several times per update (truncated
BPTT), a share of the last batch may be empty, and CDAE's user vectors need only the
batch's rows summed (`reduce_gradients`, rows).

Rank 0 owns the run folder, the checkpoints, Comet and the evaluations; the other ranks
learn its decisions (early stop) through `broadcast`.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self):
        return self.world > 1

    @property
    def main(self):
        return self.rank == 0


def start(device):
    """The Context of this process on device (picked by main.py); under torchrun with more
    than one process, the process group is joined and a CUDA device becomes
    cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world=world, device=device)


def finish(context, completed=True):
    """Leave the process group. After a completed run every process first waits for the
    others (rank 0 still evaluates the test users): a process that tore down its gloo
    connections while a peer still used them was seen to abort at exit. After an error it
    leaves at once; the others fail at their next collective."""
    if context.distributed and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()


def rank_0_first(context, work):
    """work() on rank 0, then on the other ranks: a missing data set is downloaded once."""
    if context.distributed and not context.main:
        dist.barrier()
    result = work()
    if context.distributed and context.main:
        dist.barrier()
    return result


def rank_seed(seed, context):
    """A seed for this process's noise: seed itself on rank 0 (a plain run draws what it
    always drew), an independent one on every other rank."""
    if context.rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), context.rank]).generate_state(1)[0])


def shard(batch, context):
    """This process's share of a global batch (an array of users): every world-th user
    from its rank on, so shares differ in size by at most one and never overlap."""
    return batch[context.rank::context.world]


def share(n_local, n_global):
    """The factor that turns a mean over this process's n_local users into its share of
    the mean over the global batch's n_global users (1 in a plain run)."""
    return n_local / n_global


def broadcast_weights(module, context):
    """Rank 0's parameters and buffers on every process (as DistributedDataParallel does
    at the start)."""
    if not context.distributed:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def reduce_gradients(params, context, values=(), rows=None, sparse=False):
    """Sum each parameter's gradient (None counts as zero) and the floats `values` over
    all processes, in one all-reduce; returns the summed values as a list.

    rows: {parameter: row indices (a tensor on the device)}: for that parameter only those
    rows are summed (the user vectors of the global batch: every other row's gradient is
    zero on every process); with sparse=True its gradient comes back sparse over them."""
    if not context.distributed:
        return list(values)
    rows = rows or {}
    parts, shapes = [], []
    for p in params:
        grad = p.grad
        if p in rows:
            index = rows[p]
            if grad is None:
                part = torch.zeros(len(index), *p.shape[1:], device=p.device, dtype=p.dtype)
            elif grad.is_sparse:
                part = grad.coalesce().to_dense()[index]
            else:
                part = grad[index]
        else:
            part = torch.zeros_like(p) if grad is None else grad
        parts.append(part.reshape(-1))
        shapes.append(part.shape)
    parts.append(torch.tensor(list(values), dtype=torch.float64).to(
        context.device).to(parts[0].dtype if parts else torch.float64))
    flat = torch.cat(parts)
    dist.all_reduce(flat)
    offset = 0
    for p, shape in zip(params, shapes):
        size = int(np.prod(shape))
        summed = flat[offset:offset + size].view(shape)
        offset += size
        if p in rows:
            index = rows[p]
            if sparse:
                p.grad = torch.sparse_coo_tensor(index[None, :], summed, p.shape)
                continue
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad
            p.grad[index] = summed
        else:
            p.grad = summed.clone()
    return [float(v) for v in flat[offset:].cpu()]


def broadcast(value, context):
    """Rank 0's value (any picklable object) on every process."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=context.device)
    return box[0]
