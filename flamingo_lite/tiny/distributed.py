"""Data-parallel training with torch.distributed: one process per CPU or GPU, each on its share of the batch.

    torchrun --nproc_per_node 2 -m flamingo_lite.train --out history.json          # 2 processes on this machine
    torchrun --nproc_per_node 8 -m flamingo_lite.train --out h.json --device cuda   # 8 GPUs, NCCL
    torchrun --nproc_per_node 2 -m flamingo_lite.train --out h.json --fsdp          # the frozen LM sharded

torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `start` reads
them (without them it is one process and nothing here does anything). Backend: gloo on the CPU, NCCL on GPUs.

What makes N processes train like one (the same loss history, to float rounding; a test checks it):

* every process draws the same data, the same initial weights and the same order of batches from the one seed, and
  takes its own contiguous slice of each global batch (`shard`); anything drawn per sample would come from
  `seed + rank` (`seed_rank`);
* the loss is the mean over the *global* batch's target tokens: each process sums its tokens' losses and divides
  by the token count of the whole batch (an all-reduce of one number), times N, because DDP and FSDP average the
  gradients over the N processes (`mean_loss`). Dividing by the process's own count instead would weigh a token of
  a process with much padding more than one of a process with little;
* one process (rank 0) writes the output.

`wrap` puts the model in DistributedDataParallel, or with `fsdp=True` shards it with torch's `fully_shard`
(FSDP2): every layer of the frozen language model is its own shard group, gathered just before that layer runs and
freed after, so no process holds the whole language model for longer than one layer; the trainable parts
(resampler, gated blocks) are sharded in the root group and their gradients reduce-scattered.
"""
from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..device import get_device

TORCHRUN = "torchrun --nproc_per_node {n} -m flamingo_lite.train --out history.json"
RENDEZVOUS_TIMEOUT_S = 30.0


class RendezvousError(RuntimeError):
    """The processes could not meet: the message says where they tried and the command to run."""


@dataclass(frozen=True)
class World:
    """Which process this is, of how many, and where it computes. `World()` is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        """The process that reports and writes (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_size_from_environment() -> int:
    """How many processes torchrun (or another launcher) started: WORLD_SIZE, 1 when it is not set."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {text!r}") from None
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {size}")
    return size


def check_batch_split(batch_size: int, world_size: int, what: str = "batch_size") -> None:
    """Each process needs at least one sequence of every global batch."""
    if world_size > batch_size:
        raise ValueError(
            f"{world_size} processes cannot split a batch of {batch_size} sequences ({what}={batch_size}): "
            f"every process needs at least one; use at most {batch_size} processes or a batch of at least {world_size}"
        )


def wait_for_rendezvous(host: str, port: int, timeout_s: float) -> None:
    """Return once something listens at host:port; RendezvousError after `timeout_s` seconds of trying."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise RendezvousError(f"nothing answered at {host}:{port} for {timeout_s:g} s ({err})") from None
            time.sleep(0.2)


def start(device=None, *, fsdp: bool = False, timeout_s: float = RENDEZVOUS_TIMEOUT_S) -> World:
    """Join the processes that the launcher started (gloo on the CPU, NCCL on CUDA), or return a single-process
    World when WORLD_SIZE is unset or 1. The processes must meet within `timeout_s` seconds."""
    world_size = world_size_from_environment()
    device = get_device(device)
    if world_size == 1:
        return World(device=device, fsdp=fsdp)
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RendezvousError(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; "
            f"let torchrun start the processes: {TORCHRUN.format(n=world_size)}"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    hosts_the_store = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"  # torchrun's agent hosts it
    if not hosts_the_store:
        try:
            wait_for_rendezvous(host, port, timeout_s)
        except RendezvousError as err:
            raise RendezvousError(
                f"process {rank} of {world_size} could not reach the rendezvous at MASTER_ADDR:MASTER_PORT = "
                f"{host}:{port}: {err}. On one machine, let torchrun start every process: "
                f"{TORCHRUN.format(n=world_size)}; on several, run torchrun on each with the same --rdzv-endpoint "
                "(docs/scaling.md)"
            ) from None
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=30))
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=device, fsdp=fsdp)


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_rank(world: World, seed: int) -> None:
    """After the shared draws (data, weights, batch order): draws made per sample differ between processes."""
    torch.manual_seed(seed + world.rank)


def shard(world: World, idx: torch.Tensor) -> torch.Tensor:
    """This process's contiguous slice of a global batch of indices: (B,) -> (about B / N,)."""
    if not world.distributed:
        return idx
    return torch.tensor_split(idx, world.world_size)[world.rank]


def wrap(world: World, model: nn.Module, layers: list[nn.Module] | None = None) -> nn.Module:
    """The module to call forward on: `model` itself for one process, in DDP for several, or sharded with
    `fully_shard` (when the World has fsdp=True), each of `layers` as its own group, then the rest as the root."""
    if not world.distributed:
        return model
    if world.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in layers or []:
            fully_shard(layer)
        fully_shard(model)
        return model
    ids = [world.local_rank] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mean_loss(world: World, loss_sum: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(the loss to call backward on, the global batch's mean loss as a float), from this process's share:
    the sum of its target tokens' losses and their number (scalars).

    With N processes the loss to differentiate is N * loss_sum / (target tokens of the whole batch): DDP and FSDP
    average the N gradients, which then equal the gradient of the global batch's mean.
    """
    sums = torch.stack([loss_sum.detach(), count.to(loss_sum.dtype)])  # (2,)
    if world.distributed:
        dist.all_reduce(sums)  # (2,): the whole batch's loss sum and token count
    return world.world_size * loss_sum / sums[1], float(sums[0] / sums[1])


@contextmanager
def gathered(world: World, model: nn.Module):
    """Inside, the sharded root group's parameters (the gates among them) are whole on every process."""
    if not (world.distributed and world.fsdp):
        yield model
        return
    model.unshard()
    try:
        yield model
    finally:
        model.reshard()


def full_state_dict(world: World, model: nn.Module) -> dict | None:
    """The whole model's weights on the main process (None on the others); every process must call it."""
    if not (world.distributed and world.fsdp):
        return model.state_dict() if world.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if world.is_main else None
