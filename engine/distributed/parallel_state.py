"""The tensor-parallel group a model is built for, and the collectives its layers call.

A `TPGroup` is one rank's view of the group: its rank, the world size, and the c10d
process groups it talks over (gloo on the CPU; NCCL for tensors on CUDA, plus a gloo group
for host-side messages). Process groups are made directly from a TCPStore, never through
`init_process_group`, so one process can hold several engines (a TP=1 one beside a TP=2
one in a test) without a global default group.

Layers read the group when they are constructed (`current_group()`), which is the TP=1
group unless a model is being built inside `building_for(group)`.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True, slots=True)
class TPGroup:
    """One rank's membership of a tensor-parallel group. world_size 1: no process group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    device_group: Any = None  # a c10d ProcessGroup: gloo (CPU) or NCCL (CUDA)
    cpu_group: Any = None  # gloo, for host tensors; the device group itself on the CPU

    @property
    def is_parallel(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        self.device_group.allreduce([tensor]).wait()
        return tensor

    def gather_to_first(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Concatenate every rank's `tensor` (same shape on each) along the last dim on
        rank 0; the other ranks get None. gloo has no gather of unequal parts: the vocab
        shards are padded to one size (see parallel_layers.vocab_range)."""
        tensor = tensor.contiguous()
        if self.rank == 0:
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            self.device_group.gather([parts], [tensor], _gather_options()).wait()
            return torch.cat(parts, dim=-1)
        self.device_group.gather([], [tensor], _gather_options()).wait()
        return None

    def broadcast(self, tensor: torch.Tensor, *, host: bool = False) -> torch.Tensor:
        """Rank 0's `tensor` into every rank's (same shape and dtype), in place. host=True:
        over the gloo group (a CPU tensor), else over the device group."""
        group = self.cpu_group if host else self.device_group
        group.broadcast(tensor, 0).wait()
        return tensor

    def all_gather_int(self, value: int) -> list[int]:
        """Every rank's `value`, in rank order (over the host group)."""
        mine = torch.tensor([value], dtype=torch.int64)
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        self.cpu_group.allgather([parts], [mine]).wait()
        return [int(p) for p in parts]


def _gather_options():
    options = dist.GatherOptions()
    options.rootRank = 0
    return options


SINGLE = TPGroup()
_building: contextvars.ContextVar[TPGroup] = contextvars.ContextVar("tp_group", default=SINGLE)


def current_group() -> TPGroup:
    """The group the model under construction is sharded for (TP=1 outside `building_for`)."""
    return _building.get()


@contextlib.contextmanager
def building_for(group: TPGroup) -> Iterator[TPGroup]:
    """Build (and load) a model for `group` inside this block."""
    token = _building.set(group)
    try:
        yield group
    finally:
        _building.reset(token)


def make_store(port: int, *, is_master: bool, world_size: int, timeout_s: float) -> dist.TCPStore:
    """The rendezvous store on 127.0.0.1 (only this machine's processes may join). Rank 0
    passes port 0 to have the OS pick a free port (`store.port`), or a fixed one."""
    return dist.TCPStore(
        "127.0.0.1", port, world_size, is_master,
        timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False,
    )  # fmt: skip


def form_group(
    store: dist.Store, rank: int, world_size: int, device: torch.device, timeout_s: float
) -> TPGroup:
    """Join the group (every rank must call this; it returns once all have). Collectives
    then fail after `timeout_s` instead of waiting forever on a rank that is gone."""
    timeout = datetime.timedelta(seconds=timeout_s)
    cpu_group = dist.ProcessGroupGloo(dist.PrefixStore("gloo", store), rank, world_size, timeout)
    device_group = cpu_group
    if backend_for(device) == "nccl":
        # Prepared without a GPU to try it on: NCCL for tensors on cuda:rank.
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        device_group = dist.ProcessGroupNCCL(
            dist.PrefixStore("nccl", store), rank, world_size, options
        )
    return TPGroup(rank, world_size, device, device_group, cpu_group)


def backend_for(device: torch.device) -> str:
    """The collective library for tensors on `device`: NCCL on CUDA, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"
