"""`pagedesk serve` / `python -m engine.server`: the OpenAI-compatible server, headless.

    pagedesk serve                                   # the bundled SmolLM2, 127.0.0.1:8000
    pagedesk serve --model path/or/repo --port 8001 --api-key KEY

Imports no Qt. Argument parsing is kept light (nothing heavy is imported until
`run_serve`), so the `pagedesk` entry point can add these arguments cheaply.
"""

from __future__ import annotations

import argparse
import logging
import math
import os

from engine.server.net import is_loopback

log = logging.getLogger("pagedesk.serve")

API_KEY_ENV = "PAGEDESK_API_KEY"
MiB = 1024 * 1024
DEFAULT_MAX_BODY_MIB = 1.0  # engine.server.limits.DEFAULT_MAX_BODY_BYTES, without importing FastAPI


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the server's and the engine's options to `parser` (a subcommand's parser)."""
    parser.add_argument("--model", default=None,
                        help="model dir, cached Hub repo id or .gguf file (default: bundled SmolLM2)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV})")
    parser.add_argument("--served-model-name", default=None,
                        help="the model name clients use (default: the model's own name)")
    parser.add_argument("--max-request-body-mb", type=_positive_mib, default=DEFAULT_MAX_BODY_MIB,
                        help=f"refuse larger request bodies with a 413, in MiB "
                             f"(default {DEFAULT_MAX_BODY_MIB:g})")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    engine.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    engine.add_argument("--max-num-seqs", type=int, default=64, help="most requests in one batch")
    engine.add_argument("--max-num-batched-tokens", type=int, default=1024,
                        help="token budget of one engine step")
    engine.add_argument("--max-model-len", type=int, default=None, help="cap on a request's context")
    engine.add_argument("--block-size", type=int, default=16)
    engine.add_argument("--gpu-memory-fraction", type=float, default=0.9)
    engine.add_argument("--no-prefix-caching", action="store_true")
    engine.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                        help="shard the model over N processes: N GPUs (NCCL), or on the CPU "
                             "N processes over gloo")
    engine.add_argument("--distributed-timeout", type=float, default=60.0,
                        help="seconds the tensor-parallel group may take to form, or any one "
                             "collective to finish")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    return parser


def _positive_mib(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of MiB, got {text}")
    return value


def engine_config_of(args: argparse.Namespace):
    """The EngineConfig the serve arguments ask for."""
    from engine.config import EngineConfig

    return EngineConfig(
        model=args.model, dtype=args.dtype, device=args.device, block_size=args.block_size,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len, gpu_memory_fraction=args.gpu_memory_fraction,
        enable_prefix_caching=not args.no_prefix_caching,
        tensor_parallel_size=args.tensor_parallel_size,
        distributed_timeout_s=args.distributed_timeout,
    )


def run_serve(args: argparse.Namespace) -> None:
    """Load the engine, serve it in this thread until Ctrl-C, then shut the engine down."""
    import uvicorn

    from engine.async_engine import AsyncEngine
    from engine.server.api import LOOPBACK, create_app
    from engine.server.handle import GRACEFUL_SHUTDOWN_S

    if not is_loopback(args.host) and not args.api_key:
        log.warning("serving on %s without an API key: anyone who can reach this address can "
                    "use the model (set --api-key or $%s)", args.host, API_KEY_ENV)
    engine = AsyncEngine(engine_config_of(args))
    try:
        hosts = (LOOPBACK,) if is_loopback(args.host) else None  # a LAN address answers to any name
        app = create_app(engine, api_key=args.api_key, served_model_name=args.served_model_name,
                         allowed_hosts=hosts, max_body_bytes=int(args.max_request_body_mb * MiB))
        log.info("serving %s at http://%s:%d/v1", args.served_model_name or engine.model_name,
                 args.host, args.port)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    finally:
        engine.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pagedesk serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    run_serve(args)
