"""Tensor parallelism over gloo, 2 processes on the CPU (engine/distributed/,
engine/models/parallel_layers.py): greedy tokens equal TP=1's token for token, each rank
holds about half the parameters, a killed worker ends every stream with EngineDeadError,
shutdown leaves no worker behind, and a group that cannot form fails in bounded time."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from dataclasses import asdict

import psutil
import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.async_engine import AsyncEngine, EngineDeadError
from engine.distributed.executor import TensorParallelStartupError
from engine.llm import LLM
from engine.models.parallel_layers import head_shard

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
# Float32 weights: the bundled model's "auto" would store bfloat16, and its TP=1 reference
# (make_engine) and the per-rank byte counts are float32.
CPU = {"device": "cpu", "dtype": "float32", "cpu_weight_dtype": "float32"}


def _greedy_tokens(engine: LLMEngine, prompts=PROMPTS) -> list[list[int]]:
    outs = LLM.from_engine(engine).generate(prompts, GREEDY, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def llama_one_kv_head(tmp_path_factory):
    """4 query heads sharing 1 KV head: 2 ranks cannot split it, each holds a copy. With
    biases on q/k/v (column-parallel: split) and o_proj (row-parallel: added once)."""
    from model_factory import make_random_llama

    return make_random_llama(tmp_path_factory.mktemp("tp") / "kv1", num_heads=4,
                             num_kv_heads=1, head_dim=32, num_layers=2, attention_bias=True)  # fmt: skip


def _tp_engine(model, **fields) -> LLMEngine:
    return LLMEngine(EngineConfig(model=model, tensor_parallel_size=2, **{**CPU, **fields}))


@pytest.fixture(scope="module")
def bundled_tp2():
    engine = _tp_engine(None, kv_cache_bytes=32 << 20, max_num_seqs=8)
    yield engine
    engine.release()


# ---------------------------------------------------------------- same tokens as TP=1
def test_bundled_model_greedy_tokens_equal_tp1(bundled_tp2, make_engine):
    reference = make_engine(kv_cache_bytes=32 << 20, max_num_seqs=8)
    expected = _greedy_tokens(reference)
    reference.release()
    assert _greedy_tokens(bundled_tp2) == expected


def test_each_rank_holds_about_half_the_parameters(bundled_tp2, default_loaded):
    """Rank 1's bytes are measured in its own process. SmolLM2's 3 KV groups split 2 + 1,
    the MLP and the vocabulary in halves: ~53% / 47%, and together exactly the model plus
    one more copy of the (replicated) norms."""
    model = default_loaded.model
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    norms = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "norm" in n)
    per_rank = bundled_tp2.rank_parameter_bytes()
    assert len(per_rank) == 2
    for size in per_rank:
        assert 0.4 * whole < size < 0.6 * whole, (per_rank, whole)
    assert sum(per_rank) == whole + norms
    # Rank 0's cache holds its 2 of the 3 KV heads (and rank 1's its 1).
    assert bundled_tp2.runner.shape.num_kv_heads == 2


@pytest.mark.parametrize("which,weights", [("kv_heads_divide", "float32"),
                                           ("kv_heads_replicated", "bfloat16")])  # fmt: skip
def test_random_gqa_llama_greedy_tokens_equal_tp1_and_shutdown_leaves_no_worker(
    which, weights, random_llama, llama_one_kv_head
):
    """4 query heads over 2 KV heads (one each) and over 1 KV head (a copy each; with
    attention biases; each rank's linears kept in bfloat16, as TP=1's). Releasing
    the engine (what AsyncEngine.shutdown does) stops its worker: the pid is gone."""
    model = str(random_llama if which == "kv_heads_divide" else llama_one_kv_head)
    prompts = ["hello world", "the quick brown fox jumps", "a"]
    fields = {**CPU, "cpu_weight_dtype": weights}
    reference = LLMEngine(EngineConfig(model=model, block_size=8, **fields))
    expected = _greedy_tokens(reference, prompts)
    reference.release()
    engine = _tp_engine(model, block_size=8, cpu_weight_dtype=weights)
    pids = engine.tp_executor.worker_pids
    try:
        assert engine.runner.shape.num_kv_heads == 1  # each rank's cache: its one KV head
        assert _greedy_tokens(engine, prompts) == expected
        assert all(psutil.pid_exists(pid) for pid in pids)
    finally:
        engine.release()
    assert all(_gone(pid) for pid in pids)
    assert not {p.pid for p in psutil.Process().children(recursive=True)} & set(pids)


# ---------------------------------------------------------------- failures and the end
async def _stream(engine: AsyncEngine, prompt: str, started: asyncio.Event):
    params = SamplingParams(max_tokens=900, temperature=0.0, ignore_eos=True)
    try:
        async for _ in engine.generate(prompt, params):
            started.set()
    except EngineDeadError as exc:
        return time.monotonic(), exc
    return time.monotonic(), None


def test_killed_worker_ends_every_stream_with_engine_dead_error(llama_one_kv_head):
    engine = AsyncEngine(engine=_tp_engine(str(llama_one_kv_head), block_size=8))
    worker = engine.engine.tp_executor.worker_pids[0]

    async def main():
        started = asyncio.Event()
        tasks = [asyncio.create_task(_stream(engine, p, started)) for p in ("hello", "world")]
        await asyncio.wait_for(started.wait(), 30)
        killed = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        return killed, await asyncio.wait_for(asyncio.gather(*tasks), 30)

    facts = engine.info()
    assert facts.tensor_parallel_size == 2
    try:
        killed, results = asyncio.run(main())
    finally:
        engine.shutdown()
    for ended, error in results:
        assert isinstance(error, EngineDeadError), "a stream finished although its worker died"
        assert "worker rank 1" in str(error)
        assert ended - killed < 5.0
    assert _gone(worker)


def test_port_in_use_fails_at_once_with_a_message(random_llama):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TensorParallelStartupError, match=f"127.0.0.1:{port}.*in use"):
            _tp_engine(str(random_llama), distributed_port=port)
    assert time.monotonic() - started < 10.0


def test_worker_that_does_not_join_in_time_fails_within_the_bound(random_llama):
    """A worker cannot even import torch in 0.2 s: start-up gives up after the bound,
    says why, and leaves no worker behind."""
    before = {p.pid for p in psutil.Process().children()}
    started = time.monotonic()
    with pytest.raises(TensorParallelStartupError, match=r"did not join the group within 0.2 s"):
        _tp_engine(str(random_llama), distributed_timeout_s=0.2)
    assert time.monotonic() - started < 5.0
    new = {p.pid for p in psutil.Process().children()} - before
    assert all(_gone(pid) for pid in new)


def test_unsupported_family_and_heads_are_refused_before_any_worker_starts(tmp_path):
    from family_parity import save_random_model
    from model_factory import make_random_llama

    opt = save_random_model(tmp_path / "opt", "opt", hidden_size=64, num_hidden_layers=1,
                            ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=64,
                            max_position_embeddings=64)  # fmt: skip
    three_heads = make_random_llama(tmp_path / "heads3", num_heads=3, num_kv_heads=1,
                                    head_dim=16, num_layers=1)  # fmt: skip
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(ValueError, match=r"supported for the Llama family .*; native OPT is not"):
        _tp_engine(str(opt))
    with pytest.raises(ValueError, match=re.escape("divide the number of attention heads (3)")):
        _tp_engine(str(three_heads))
    assert {p.pid for p in psutil.Process().children()} <= before  # no worker was started


# ---------------------------------------------------------------- the arithmetic, one process
@pytest.mark.parametrize("heads,kv_heads,tp", [(4, 2, 2), (4, 1, 2), (9, 3, 2), (8, 2, 4),
                                               (8, 8, 4), (16, 4, 8), (6, 3, 3)])
def test_each_query_head_reads_the_kv_head_it_reads_unsharded(heads, kv_heads, tp):
    """Rank r's local head i is global head q_start + i; under GQA it must read the same
    KV head as in the whole model, through the rank's own regular grouping."""
    covered = []
    for rank in range(tp):
        shard = head_shard(heads, kv_heads, rank, tp)
        local_group = shard.num_heads // shard.num_kv_heads
        assert shard.num_heads % shard.num_kv_heads == 0
        for i in range(shard.num_heads):
            q = shard.q_start + i
            assert q // (heads // kv_heads) == shard.kv_start + i // local_group
            covered.append(q)
    assert covered == list(range(heads))  # every query head on exactly one rank


@pytest.mark.parametrize("heads,kv_heads,tp,needle", [(12, 3, 4, "multiple of the number of KV"),
                                                      (6, 2, 4, "must divide the number of attention heads (6)"),
                                                      (4, 2, 8, "must divide the number of attention heads (4)")])
def test_heads_that_cannot_be_split_are_a_clear_error(heads, kv_heads, tp, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        head_shard(heads, kv_heads, 0, tp)


class _OneRankOfTwo:
    """A simulated rank of a 2-way group: its all-reduce is left to the test (identity),
    which then sums the ranks' partial results itself."""

    world_size, is_parallel = 2, True

    def __init__(self, rank: int):
        self.rank = rank

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def test_parallel_layers_reproduce_the_unsharded_layers():
    """Each simulated rank's layer loaded with its rows / columns of the full weights (as
    its loader would read them); the sum over ranks of their partial outputs (what the
    all-reduce computes) equals the unsharded layer, and the vocab shards of the LM head
    concatenate to the full logits (vocab 11: rank 1's shard padded by one row)."""
    from engine.models.layers import Embedding, GatedMLP
    from engine.models.parallel_layers import ParallelGatedMLP, VocabParallelEmbedding

    torch.manual_seed(0)
    hidden, inter, vocab = 12, 8, 11
    x = torch.randn(5, hidden)
    full_mlp = GatedMLP(hidden, inter, "silu", bias=True)
    full_emb = Embedding(vocab, hidden)
    for p in (*full_mlp.parameters(), *full_emb.parameters()):
        torch.nn.init.normal_(p)
    ids = torch.tensor([0, 5, 6, 10, 3])
    mlp_sum, emb_sum, logits = 0, 0, []
    with torch.no_grad():
        for rank in range(2):
            group = _OneRankOfTwo(rank)
            mlp = ParallelGatedMLP(hidden, inter, "silu", bias=True, group=group)
            a, b = rank * inter // 2, (rank + 1) * inter // 2
            w, bias = full_mlp.gate_up_proj.weight, full_mlp.gate_up_proj.bias
            mlp.gate_up_proj.weight.copy_(torch.cat((w[a:b], w[inter + a : inter + b])))
            mlp.gate_up_proj.bias.copy_(torch.cat((bias[a:b], bias[inter + a : inter + b])))
            mlp.down_proj.weight.copy_(full_mlp.down_proj.weight[:, a:b])
            mlp.down_proj.bias.copy_(full_mlp.down_proj.bias / 2)  # added once per rank here
            mlp_sum = mlp_sum + mlp(x)
            emb = VocabParallelEmbedding(vocab, hidden, group)
            emb.weight.zero_()
            emb.weight[: emb.stop - emb.start].copy_(full_emb.weight[emb.start : emb.stop])
            emb_sum = emb_sum + emb(ids)
            logits.append(x @ emb.weight.T)
        torch.testing.assert_close(mlp_sum, full_mlp(x))
        torch.testing.assert_close(emb_sum, full_emb(ids))
        torch.testing.assert_close(torch.cat(logits, -1)[:, :vocab], x @ full_emb.weight.T)


def test_tp1_builds_the_plain_layers(random_llama):
    """TP=1 keeps exactly the code path it had: no parallel layer, no group."""
    from engine.models.llama import LlamaForCausalLM
    from engine.models.parallel_layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
    from engine.model_loader import load_model

    model = load_model(str(random_llama), dtype=torch.float32, device=torch.device("cpu")).model
    assert isinstance(model, LlamaForCausalLM) and not model.tp.is_parallel
    parallel = (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)
    assert not any(isinstance(m, parallel) for m in model.modules())


# ---------------------------------------------------------------- pagedesk serve -tp 2
def test_serve_flag_reaches_the_engine():
    import argparse

    from engine.server.cli import add_serve_arguments, engine_config_of

    parser = add_serve_arguments(argparse.ArgumentParser())
    config = engine_config_of(parser.parse_args(["--tensor-parallel-size", "2",
                                                 "--distributed-timeout", "15"]))  # fmt: skip
    assert (config.tensor_parallel_size, config.distributed_timeout_s) == (2, 15.0)
    with pytest.raises(ValueError, match="tensor_parallel_size must be an integer >= 1, got 0"):
        engine_config_of(parser.parse_args(["--tensor-parallel-size", "0"]))


def test_pagedesk_serve_tp2_answers_as_tp1_and_its_worker_dies_with_it(random_llama, tmp_path):
    """`python -m app serve --tensor-parallel-size 2` in a subprocess: the completion is
    TP=1's, the worker is the server's child, and when the server is killed (no shutdown
    at all) the worker notices its parent is gone and exits."""
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "app", "serve", "--model", str(random_llama), "--port",
           str(port), "--device", "cpu", "--dtype", "float32", "--block-size", "8",
           "--tensor-parallel-size", "2", "--log-level", "warning"]  # fmt: skip
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=out,
                                  stderr=out, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert server.poll() is None, log.read_text()[-2000:]
        reply = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "model": random_llama.name, "prompt": "hello world", "max_tokens": 12,
            "temperature": 0, "ignore_eos": True}).json()  # fmt: skip
        reference = LLMEngine(EngineConfig(model=str(random_llama), block_size=8, **CPU))
        expected = LLM.from_engine(reference).generate(
            "hello world", SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
            use_tqdm=False)[0].outputs[0].text  # fmt: skip
        reference.release()
        assert reply["choices"][0]["text"] == expected
        workers = [p for p in psutil.Process(server.pid).children()
                   if "multiprocessing.spawn" in " ".join(p.cmdline())]  # fmt: skip
        assert len(workers) == 1
        server.kill()
        server.wait(10)
        assert _gone(workers[0].pid, within=10.0), "the worker outlived its engine's process"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


# ---------------------------------------------------------------- what the app shows
def test_kv_snapshot_and_panel_say_the_blocks_are_per_rank(bundled_tp2, qtbot):
    """Every rank holds the scheduler's block table over its own KV heads: rank 0's 2 of
    SmolLM2's 3, 30 layers x 2 heads x 64 x (K, V) x 4 bytes = 30 KiB a token, per rank."""
    from ui.kv_cache_view import KVCacheView, format_bytes

    snap = bundled_tp2.kv_snapshot()
    assert snap.tensor_parallel_size == 2
    assert snap.kv_bytes_per_token == 30 * 2 * 64 * 2 * 4
    view = KVCacheView()
    qtbot.addWidget(view)
    view.set_snapshot(snap)
    view.refresh()
    label = view.numbers.labels["kvBytesPerTokenLabel"].text()
    assert label == f"{format_bytes(30 * 2 * 64 * 2 * 4)} per rank ×2"


def test_engine_info_and_settings_dialog_offer_tensor_parallelism(qtbot):
    from types import SimpleNamespace

    from app.device_info import engine_info
    from app.settings import AppSettings
    from ui.settings_dialog import SettingsDialog

    facts = SimpleNamespace(model_name="m", device=torch.device("cpu"), attention_backend="torch",
                            num_kv_blocks=10, block_size=16, max_model_len=160,
                            model_path="native Llama", tensor_parallel_size=2)  # fmt: skip
    info = engine_info(facts, "cpu")
    assert info.device == "CPU (chosen in the settings) · TP=2: 2 processes over gloo"
    assert info.tensor_parallel_size == 2 and info.gpus == ()  # torch sees no GPU here

    dialog = SettingsDialog(asdict(AppSettings()), gpus=info.gpus)
    qtbot.addWidget(dialog)
    devices = dialog.tp_devices
    assert "CPU: 1 process over gloo" in devices.text()
    dialog.tp_size.setValue(2)
    assert "CPU: 2 processes over gloo" in devices.text()
    fields = AppSettings(**dialog.values()).engine_config_fields()
    assert fields["tensor_parallel_size"] == 2
    gpu_dialog = SettingsDialog(asdict(AppSettings()), gpus=("cuda:0 A", "cuda:1 B"))
    qtbot.addWidget(gpu_dialog)
    gpu_dialog.tp_size.setValue(4)
    assert gpu_dialog.tp_devices.text() == "GPUs: cuda:0 A; cuda:1 B. 4 ranks need 4 GPUs: only 2 here"


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_each_rank_loads_exactly_its_rows_of_the_checkpoint(kv_heads, random_llama, llama_one_kv_head):
    """Rank 1 of 2, built in this process (no collective runs while loading): every
    parameter holds exactly its part of the checkpoint tensor, read independently here
    with safetensors: q rows of heads 2-3, k/v rows of its KV head (the only one, copied,
    when there is one), columns of o_proj / down_proj, its half of gate and up, vocab rows
    130-258 of 259 (the last row padding)."""
    from safetensors.torch import load_file

    from engine.distributed.parallel_state import building_for
    from engine.model_loader import load_model

    model_dir = random_llama if kv_heads == 2 else llama_one_kv_head
    full = load_file(str(model_dir / "model.safetensors"))
    with building_for(_OneRankOfTwo(1)):
        model = load_model(str(model_dir), dtype=torch.float32, device=torch.device("cpu")).model
    d, kv = 32, 1 if kv_heads == 2 else 0  # rank 1's KV head: 1 of 2, or the only one
    attn = model.model.layers[0].self_attn
    qkv = torch.cat((full["model.layers.0.self_attn.q_proj.weight"][2 * d : 4 * d],
                     full["model.layers.0.self_attn.k_proj.weight"][kv * d : (kv + 1) * d],
                     full["model.layers.0.self_attn.v_proj.weight"][kv * d : (kv + 1) * d]))  # fmt: skip
    assert torch.equal(attn.qkv_proj.weight, qkv)
    assert torch.equal(attn.o_proj.weight, full["model.layers.0.self_attn.o_proj.weight"][:, 2 * d :])
    if kv_heads == 1:  # this one has attention biases: q/k/v's split, o_proj's whole
        bias = torch.cat((full["model.layers.0.self_attn.q_proj.bias"][2 * d : 4 * d],
                          full["model.layers.0.self_attn.k_proj.bias"],
                          full["model.layers.0.self_attn.v_proj.bias"]))  # fmt: skip
        assert torch.equal(attn.qkv_proj.bias, bias)
        assert torch.equal(attn.o_proj.bias, full["model.layers.0.self_attn.o_proj.bias"])
    mlp, inter = model.model.layers[0].mlp, 256 // 2
    gate_up = torch.cat((full["model.layers.0.mlp.gate_proj.weight"][inter:],
                         full["model.layers.0.mlp.up_proj.weight"][inter:]))  # fmt: skip
    assert torch.equal(mlp.gate_up_proj.weight, gate_up)
    assert torch.equal(mlp.down_proj.weight, full["model.layers.0.mlp.down_proj.weight"][:, inter:])
    embed = model.model.embed_tokens
    assert (embed.start, embed.stop, embed.weight.shape[0]) == (130, 259, 130)
    assert torch.equal(embed.weight[:129], full["model.embed_tokens.weight"][130:])
    assert torch.equal(model.lm_head.weight[:129], full["lm_head.weight"][130:])
    norm = full["model.layers.0.input_layernorm.weight"]
    assert torch.equal(model.model.layers[0].input_layernorm.weight, norm)  # replicated


def test_cuda_ranks_get_nccl_and_one_gpu_each():
    """What can be checked without a GPU (tests/gpu/test_tensor_parallel_gpu.py runs the
    real thing): CUDA means NCCL and rank r on cuda:r; the CPU means gloo."""
    from engine.distributed.executor import rank_device
    from engine.distributed.parallel_state import backend_for

    assert backend_for(torch.device("cuda", 0)) == "nccl"
    assert backend_for(torch.device("cpu")) == "gloo"
    assert [rank_device(torch.device("cuda", 0), r) for r in range(3)] == ["cuda:0", "cuda:1", "cuda:2"]
    assert rank_device(torch.device("cpu"), 1) == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            EngineConfig(device="cuda", tensor_parallel_size=2).resolve_device()
