"""Rank 0's side of tensor parallelism: start the workers, form the group, and drive them.

`TensorParallelExecutor.start(config, device)` spawns ranks 1..N-1 (multiprocessing
"spawn"), rendezvouses with them on 127.0.0.1 (a free port the OS picks, or
EngineConfig.distributed_port), and fails within `distributed_timeout_s` with a message
naming the reason when the group cannot be formed. `TensorParallelModel` wraps rank 0's
shard so the model runner drives it as it drives any model: each forward pass and each
LM-head call is first announced to the workers, then run here, where its collectives pair
with theirs. A worker that dies is noticed before each step (its process is checked) and
inside one (gloo fails on the closed connection, or after the group's timeout): the step
raises `WorkerDiedError`, which the engine reports to every stream as EngineDeadError.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable

import torch
from torch import nn

from engine.config import EngineConfig
from engine.distributed.messages import Op, header, pack_step, step_header
from engine.distributed.parallel_state import TPGroup, form_group, make_store
from engine.distributed.worker import WorkerArgs, parameter_bytes, worker_main

log = logging.getLogger(__name__)

SHUTDOWN_WAIT_S = 5.0  # a worker asked to stop gets this long before it is killed


class WorkerDiedError(RuntimeError):
    """A tensor-parallel worker process is gone: the group cannot compute any more."""


class TensorParallelStartupError(RuntimeError):
    """The tensor-parallel group could not be formed (port in use, a rank that did not
    start or join in time, a worker that failed to load its shard)."""


class TensorParallelExecutor:
    def __init__(self, config: EngineConfig, device: torch.device, dtype: torch.dtype,
                 cpu_weight_dtype: torch.dtype = torch.float32):  # fmt: skip
        self.config = config
        self.cpu_weight_dtype = cpu_weight_dtype
        self.world_size = config.tensor_parallel_size
        self.timeout_s = config.distributed_timeout_s
        self.device = device
        self.dtype = dtype
        self.processes: list[multiprocessing.Process] = []
        self.conns: list = []
        self.group: TPGroup | None = None
        self._store = None  # the rendezvous TCPStore: kept alive as long as the group
        self.worker_parameter_bytes: list[int] = []
        self._closed = False

    # ---------------------------------------------------------------- start-up
    @classmethod
    def start(cls, config: EngineConfig, device: torch.device, dtype: torch.dtype,
              cpu_weight_dtype: torch.dtype = torch.float32) -> TensorParallelExecutor:  # fmt: skip
        """Spawn the workers and form the group; TensorParallelStartupError (workers
        stopped) when that fails or takes longer than distributed_timeout_s.
        cpu_weight_dtype: what the workers' packed CPU linears keep their weights in."""
        executor = cls(config, device, dtype, cpu_weight_dtype)
        try:
            executor._form()
        except BaseException:
            executor.shutdown(wait_s=0.0)  # a worker that failed to join is not waited for
            raise
        return executor

    def _form(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        port = self.config.distributed_port or 0
        try:
            store = make_store(port, is_master=True, world_size=self.world_size,
                               timeout_s=self.timeout_s)  # fmt: skip
        except (RuntimeError, OSError) as exc:
            raise TensorParallelStartupError(
                f"Cannot start the tensor-parallel rendezvous on 127.0.0.1:{port} "
                f"(is the port in use?): {exc}"
            ) from exc
        self._store = store
        self._spawn(store.port)
        self.group = self._wait(lambda: form_group(store, 0, self.world_size, self.device,
                                                   self.timeout_s), deadline, "join the group")  # fmt: skip
        log.info("tensor-parallel group of %d formed on 127.0.0.1:%d (%s)",
                 self.world_size, store.port, type(self.group.device_group).__name__)  # fmt: skip

    def _spawn(self, port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        for rank in range(1, self.world_size):
            device = rank_device(self.device, rank)
            args = WorkerArgs(
                rank, self.world_size, port, self.config.model, str(self.dtype).split(".")[-1],
                device, self.config.block_size, self.config.attention_backend,
                self.config.pack_cpu_weights,
                str(self.cpu_weight_dtype).split(".")[-1], self.timeout_s, torch.get_num_threads(),
                os.getpid(),
            )  # fmt: skip
            ours, theirs = ctx.Pipe()
            process = ctx.Process(target=worker_main, args=(args, theirs), daemon=True,
                                  name=f"pagedesk-tp-rank{rank}")  # fmt: skip
            process.start()
            theirs.close()
            self.processes.append(process)
            self.conns.append(ours)

    def _wait(self, fn: Callable, deadline: float, what: str):
        """fn() in a thread, watching the workers meanwhile: a worker that exits, or the
        deadline passing, fails start-up at once with the reason."""
        result: dict = {}

        def run() -> None:
            try:
                result["value"] = fn()
            except BaseException as exc:
                result["error"] = exc

        thread = threading.Thread(target=run, name="pagedesk-tp-rendezvous", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.05)
            self._fail_if_a_worker_exited(what)
            if time.monotonic() > deadline and thread.is_alive():
                raise TensorParallelStartupError(
                    f"tensor-parallel workers did not {what} within "
                    f"{self.timeout_s:g} s (distributed_timeout_s)"
                )
        if "error" in result:
            raise TensorParallelStartupError(
                f"the tensor-parallel group could not {what}: {result['error']}"
            ) from result["error"]
        return result["value"]

    def _fail_if_a_worker_exited(self, what: str) -> None:
        for rank, (process, conn) in enumerate(zip(self.processes, self.conns), start=1):
            if process.is_alive():
                continue
            reason = _startup_error(conn)
            raise TensorParallelStartupError(
                f"tensor-parallel worker rank {rank} exited (code {process.exitcode}) before "
                f"it could {what}" + (f": {reason}" if reason else "")
            )

    def wait_ready(self) -> None:
        """Wait (bounded) until every worker has loaded its shard; each reports its
        parameter bytes."""
        deadline = time.monotonic() + self.timeout_s
        sizes = []
        for rank, conn in enumerate(self.conns, start=1):
            while not conn.poll(0.05):
                self._fail_if_a_worker_exited("load its shard")
                if time.monotonic() > deadline:
                    raise TensorParallelStartupError(
                        f"tensor-parallel worker rank {rank} did not load its shard within "
                        f"{self.timeout_s:g} s (distributed_timeout_s)"
                    )
            message = _receive(conn)
            if not message or message[0] != "ready":
                reason = message[1] if message else "its pipe closed"
                raise TensorParallelStartupError(
                    f"tensor-parallel worker rank {rank} failed to load its shard: {reason}"
                )
            sizes.append(int(message[1]))
        self.worker_parameter_bytes = sizes

    # ---------------------------------------------------------------- driving
    def check_alive(self) -> None:
        """WorkerDiedError naming the rank if a worker process is gone."""
        for rank, process in enumerate(self.processes, start=1):
            if not process.is_alive():
                raise WorkerDiedError(
                    f"tensor-parallel worker rank {rank} (pid {process.pid}) died "
                    f"(exit code {process.exitcode})"
                )

    def send(self, message: bytes) -> None:
        self.check_alive()
        for rank, conn in enumerate(self.conns, start=1):
            try:
                conn.send_bytes(message)
            except OSError as exc:
                raise WorkerDiedError(f"tensor-parallel worker rank {rank} is gone: {exc}") from exc

    def collective(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run a step's part that talks to the workers; a failure caused by a dead worker
        becomes WorkerDiedError."""
        try:
            return fn()
        except RuntimeError as exc:
            if isinstance(exc, WorkerDiedError):
                raise
            time.sleep(0.1)  # let a killed worker's exit be seen
            self.check_alive()
            raise WorkerDiedError(f"a tensor-parallel collective failed: {exc}") from exc

    def allocate_cache(self, num_blocks: int) -> None:
        self.send(header(Op.ALLOCATE, num_blocks))

    # ---------------------------------------------------------------- the end
    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Tell the workers to stop, wait up to `wait_s`, kill any that did not; idempotent."""
        if self._closed:
            return
        self._closed = True
        for conn in self.conns:
            try:
                conn.send_bytes(header(Op.SHUTDOWN))
            except OSError:
                pass
        deadline = time.monotonic() + wait_s
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("tensor-parallel worker %s did not stop: killing it", process.pid)
                process.kill()
                process.join(SHUTDOWN_WAIT_S)
        for conn in self.conns:
            conn.close()

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.processes]


def rank_device(device: torch.device, rank: int) -> str:
    """Where rank `rank` runs: cuda:rank on CUDA (one GPU each), else the CPU."""
    return f"cuda:{rank}" if device.type == "cuda" else "cpu"


def _receive(conn):
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _startup_error(conn) -> str | None:
    """The error a worker sent before exiting, if it sent one."""
    try:
        if conn.poll(0):
            message = conn.recv()
            if message and message[0] == "error":
                return message[1]
    except (EOFError, OSError):
        pass
    return None


class TensorParallelModel(nn.Module):
    """Rank 0's shard, driven so the workers run the same forward passes and LM-head calls
    in the same order (their collectives pair up with these)."""

    def __init__(self, model: nn.Module, executor: TensorParallelExecutor):
        super().__init__()
        self.model = model  # a submodule: pack_cpu_linears and .parameters() reach it
        self.executor = executor
        self.config = model.config

    def forward(self, input_ids, positions, kv_caches, meta) -> torch.Tensor:
        executor = self.executor
        executor.send(step_header(input_ids, meta, kv_caches[0][0].shape[0]))

        def run() -> torch.Tensor:
            executor.group.broadcast(pack_step(input_ids, positions, meta))
            return self.model(input_ids, positions, kv_caches, meta)

        return executor.collective(run)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        executor = self.executor
        hidden = hidden.contiguous()
        executor.send(header(Op.LOGITS, hidden.shape[0]))

        def run() -> torch.Tensor:
            executor.group.broadcast(hidden)
            return self.model.compute_logits(hidden)

        return executor.collective(run)

    def parameter_bytes(self) -> list[int]:
        """Parameter bytes on each rank, rank 0 first."""
        return [parameter_bytes(self.model), *self.executor.worker_parameter_bytes]
