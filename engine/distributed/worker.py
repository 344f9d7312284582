"""A tensor-parallel worker: one rank > 0, in its own process (started with "spawn").

It joins the group, loads its shard of the model, reports ready, then runs what rank 0
sends: each step's forward pass on its shard (its all-reduces pair with rank 0's), its
part of the LM head, and shutdown. It exits when told to, when the engine's end of its
pipe closes (the engine process died), or when its parent process is gone.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from dataclasses import dataclass

import torch

from engine.distributed.messages import Op, read_header, step_size, unpack_step

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often an idle worker checks that its parent is still there


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    rank: int
    world_size: int
    port: int
    model: str | None
    dtype: str  # "float32", "float16", "bfloat16"
    device: str  # "cpu" or "cuda:<rank>"
    block_size: int
    attention_backend: str
    pack_cpu_weights: bool
    cpu_weight_dtype: str  # "float32" or "bfloat16": packed linears' storage
    timeout_s: float
    num_threads: int
    parent_pid: int


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters on this rank."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def worker_main(args: WorkerArgs, conn) -> None:
    """The process's entry point: report start-up failures down the pipe, then serve."""
    torch.set_num_threads(args.num_threads)
    try:
        worker = _Worker(args, conn)
    except BaseException as exc:  # tell rank 0 why, rather than only dying
        _send_quietly(conn, ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        sys.exit(1)
    _send_quietly(conn, ("ready", parameter_bytes(worker.model)))
    try:
        worker.serve()
    except (EOFError, OSError):
        pass  # the engine closed its end: it is gone
    except Exception:
        traceback.print_exc()
        sys.exit(1)


def _send_quietly(conn, message: tuple) -> None:
    try:
        conn.send(message)
    except OSError:
        pass


class _Worker:
    def __init__(self, args: WorkerArgs, conn):
        from engine.distributed.parallel_state import building_for, form_group, make_store
        from engine.model_loader import load_model
        from engine.models.layers import pack_cpu_linears
        import kernels

        self.args, self.conn = args, conn
        self.device = torch.device(args.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        store = make_store(args.port, is_master=False, world_size=args.world_size,
                           timeout_s=args.timeout_s)  # fmt: skip
        self.group = form_group(store, args.rank, args.world_size, self.device, args.timeout_s)
        self.store = store  # kept alive with the group
        dtype = getattr(torch, args.dtype)
        with building_for(self.group):
            loaded = load_model(args.model, dtype=dtype, device=self.device)
        self.model, self.hf_config, self.dtype = loaded.model, loaded.hf_config, dtype
        if args.pack_cpu_weights and self.device.type == "cpu":
            pack_cpu_linears(self.model, getattr(torch, args.cpu_weight_dtype))
        self.backend = kernels.resolve_backend(args.attention_backend, self.device)
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def serve(self) -> None:
        while True:
            if not self.conn.poll(POLL_S):
                if os.getppid() != self.args.parent_pid:
                    return  # orphaned: the engine process is gone
                continue
            op, fields = read_header(self.conn.recv_bytes())
            if op is Op.SHUTDOWN:
                return
            with torch.inference_mode():
                self._run(op, fields)

    def _run(self, op: Op, fields: list[int]) -> None:
        if op is Op.STEP:
            packed = torch.empty(step_size(fields), dtype=torch.int64, device=self.device)
            self.group.broadcast(packed)
            ids, pos, meta = unpack_step(packed, fields, self.backend, self.args.block_size)
            self.model(ids, pos, self._cache_for(fields[5]), meta)
        elif op is Op.LOGITS:
            hidden = torch.empty(fields[0], self.hf_config.hidden_size, dtype=self.dtype,
                                 device=self.device)  # fmt: skip
            self.model.compute_logits(self.group.broadcast(hidden))
        elif op is Op.ALLOCATE:
            self.kv_caches = self._allocate(fields[0])
        else:
            raise ValueError(f"unknown tensor-parallel op {op!r}")

    def _cache_for(self, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The KV cache once allocated; before that (CUDA memory profiling), a scratch one
        of the size rank 0 ran with."""
        if self.kv_caches:
            return self.kv_caches
        return self._allocate(num_blocks)

    def _allocate(self, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from engine.model_runner import allocate_kv_cache, cache_shape_of

        shape = cache_shape_of(self.hf_config, self.dtype, self.args.world_size, self.args.rank)
        return allocate_kv_cache(shape, num_blocks, self.args.block_size, self.device)
