"""engine/cuda_graphs.py on the CPU: the capture sizes, which size a batch pads to, the
padded static buffers, the time budget and the fallback when a capture fails, and — the
CPU stand-in for a replay — the padded batch run eagerly gives the unpadded batch's hidden
rows and writes no cache slot for its padding rows. Replay itself is checked on a GPU
(tests/gpu/test_cuda_graphs_gpu.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from engine import cuda_graphs
from engine.attention import AttentionMetadata
from engine.config import EngineConfig
from engine.cuda_graphs import DecodeGraphs, capture_sizes, graphs_supported

BLOCK = 8


def test_capture_sizes_follow_vllm():
    assert capture_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert capture_sizes(1) == [1]
    assert capture_sizes(3) == [1, 2, 3]
    assert capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    with pytest.raises(ValueError):
        capture_sizes(0)


def test_graphs_only_on_cuda_with_triton():
    assert "CUDA device" in graphs_supported("cpu", "triton")
    assert "torch" in graphs_supported("cuda", "torch")
    assert graphs_supported("cuda:1", "triton") is None
    with pytest.raises(ValueError, match="CUDA"):
        DecodeGraphs(_Stub(), _caches(4), 4, 4, "cpu", "torch")
    assert EngineConfig().enforce_eager is False
    assert EngineConfig(enforce_eager=True).enforce_eager


class _Stub(torch.nn.Module):
    """A 'model' whose hidden row is (input id, position): enough for the dispatch tests."""

    def __init__(self, long_after: int | None = None):
        super().__init__()
        self.long_after = long_after

    def forward(self, input_ids, positions, kv_caches, meta):
        return torch.stack([input_ids, positions], dim=1).float()


def _caches(num_blocks: int, layers: int = 1, kv_heads: int = 2, head_dim: int = 32):
    dims = (num_blocks, BLOCK, kv_heads, head_dim)
    return [(torch.zeros(dims), torch.zeros(dims)) for _ in range(layers)]


def _decode_meta(tables: list[list[int]], seq_lens: list[int], backend="torch") -> AttentionMetadata:
    """A decode step's metadata, as ModelRunner.prepare_inputs builds it."""
    width = max(len(t) for t in tables)
    slots = [t[(n - 1) // BLOCK] * BLOCK + (n - 1) % BLOCK for t, n in zip(tables, seq_lens)]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        cu_query_lens=torch.arange(len(tables) + 1, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        backend=backend,
        max_query_len=1,
        max_seq_len=max(seq_lens),
    )


def test_padded_size_is_the_next_captured_size():
    graphs = DecodeGraphs(_Stub(), _caches(4), 20, 4, "cpu", "torch", eager=True)
    assert graphs.padded_size(1) is None  # nothing captured yet
    assert graphs.capture() == [1, 2, 4, 8, 16, 20]
    picks = {n: graphs.padded_size(n) for n in (1, 2, 3, 5, 8, 9, 17, 20)}
    assert picks == {1: 1, 2: 2, 3: 4, 5: 8, 8: 8, 9: 16, 17: 20, 20: 20}
    assert graphs.padded_size(21) is None and graphs.padded_size(0) is None
    assert graphs.metadata(4).max_seq_len == 4 * BLOCK  # the capture-time bound, not a step's
    assert graphs.metadata(4).max_query_len == 1


def test_fill_pads_with_slot_minus_one_and_a_valid_dummy_row():
    graphs = DecodeGraphs(_Stub(), _caches(8), 8, 4, "cpu", "torch", max_model_len=30, eager=True)
    graphs.capture()
    meta = _decode_meta([[3], [5, 7], [1]], [6, 10, 4])
    ids, pos = torch.tensor([11, 12, 13]), torch.tensor([5, 9, 3])
    hidden = graphs.run(ids, pos, meta)
    assert graphs.padded_size(3) == 4
    assert graphs.input_ids[:4].tolist() == [11, 12, 13, 0]
    assert graphs.positions[:4].tolist() == [5, 9, 3, 0]
    assert graphs.slot_mapping[:4].tolist() == meta.slot_mapping.tolist() + [-1]
    assert graphs.seq_lens[:4].tolist() == [6, 10, 4, 1]
    assert graphs.block_tables[:4].tolist() == [[3, 0, 0, 0], [5, 7, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert graphs.cu_query_lens[:5].tolist() == [0, 1, 2, 3, 4]
    assert hidden.tolist() == [[11, 5], [12, 9], [13, 3]]  # the first n rows only
    assert graphs.hidden[3].tolist() == [0, 0]  # the padding row ran: token 0 at position 0
    # A smaller batch next: stale rows from the bigger one are padding again.
    graphs.run(ids[:1], pos[:1], _decode_meta([[2]], [3]))
    assert graphs.slot_mapping[:1].tolist() == [2 * BLOCK + 2]
    assert graphs.metadata(1).max_seq_len == 30


def test_fill_refuses_what_a_decode_graph_cannot_take():
    graphs = DecodeGraphs(_Stub(), _caches(8), 4, 2, "cpu", "torch", eager=True)
    graphs.capture()
    meta = _decode_meta([[1], [2]], [3, 4])
    ids = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="max_query_len"):
        graphs.fill(2, ids, ids, AttentionMetadata(**{**_fields(meta), "max_query_len": 5}))
    with pytest.raises(ValueError, match="one query token"):
        bad_cu = torch.tensor([0, 1, 3], dtype=torch.int32)
        graphs.fill(4, torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]),
                    AttentionMetadata(**{**_fields(meta), "cu_query_lens": bad_cu}))  # fmt: skip
    with pytest.raises(ValueError, match="exceed"):
        wide = _decode_meta([[1, 2, 3], [2]], [20, 4])
        graphs.fill(2, ids, ids, wide)
    with pytest.raises(ValueError, match="pad"):
        graphs.fill(1, ids, ids, meta)
    with pytest.raises(ValueError, match="no captured"):
        graphs.run(torch.arange(5), torch.arange(5), _decode_meta([[1]] * 5, [2] * 5))


def _fields(meta: AttentionMetadata) -> dict:
    return {name: getattr(meta, name) for name in AttentionMetadata.__slots__}


def test_rope_switch_sends_short_contexts_to_the_eager_path():
    """A longrope model captured past its switch bakes in the long tables: only steps past
    the switch may replay. Captured below it, every step fits."""
    long_bound = DecodeGraphs(_Stub(long_after=100), _caches(4), 4, 32, "cpu", "torch", eager=True)
    long_bound.capture()
    assert long_bound.padded_size(3, max_seq_len=50) is None
    assert long_bound.padded_size(3, max_seq_len=None) is None
    assert long_bound.padded_size(3, max_seq_len=101) == 4
    short_bound = DecodeGraphs(_Stub(long_after=100), _caches(4), 4, 32, "cpu", "torch",
                               max_model_len=90, eager=True)  # fmt: skip
    short_bound.capture()
    assert short_bound.padded_size(3, max_seq_len=50) == 4
    assert short_bound.padded_size(3) == 4


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cuda_free_graphs(monkeypatch, max_num_seqs: int, capture_one) -> DecodeGraphs:
    """DecodeGraphs taking its CUDA path (capture, budget, failure) with the CUDA calls
    replaced, so that the dispatch runs on the CPU."""
    graphs = DecodeGraphs(_Stub(), _caches(4), max_num_seqs, 4, "cpu", "torch", eager=True)
    graphs.eager = False
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(DecodeGraphs, "_capture_one", capture_one)
    return graphs


def test_capture_stops_at_the_time_budget_and_logs_it(monkeypatch, caplog):
    clock = _FakeClock()
    monkeypatch.setattr(cuda_graphs.time, "perf_counter", clock)

    def capture_one(self, size):
        assert self.slot_mapping.eq(-1).all(), "a capture's warm-up must write no cache slot"
        clock.now += 4.0  # each size takes 4 s
        self.graphs[size] = f"graph-{size}"

    graphs = _cuda_free_graphs(monkeypatch, 64, capture_one)
    graphs.capture_budget_s = 10.0
    with caplog.at_level(logging.INFO, logger="engine.cuda_graphs"):
        assert graphs.capture() == [1, 2, 4]  # 0, 4, 8 s elapsed; at 12 s it stops
    assert graphs.padded_size(3) == 4 and graphs.padded_size(5) is None
    assert graphs.pool == "pool" and set(graphs.graphs) == {1, 2, 4}
    text = caplog.text
    assert "budget" in text and "above 4 run eagerly" in text
    assert "captured 3 decode batch sizes (1..4)" in text


def test_failed_capture_leaves_every_step_eager(monkeypatch, caplog):
    def capture_one(self, size):
        if size == 4:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.graphs[size] = f"graph-{size}"

    graphs = _cuda_free_graphs(monkeypatch, 8, capture_one)
    with caplog.at_level(logging.WARNING, logger="engine.cuda_graphs"):
        assert graphs.capture() == []
    assert graphs.graphs == {} and graphs.padded_size(1) is None
    assert "capture failed" in caplog.text and "not permitted" in caplog.text


def test_close_lets_go_of_the_model_and_the_caches():
    graphs = DecodeGraphs(_Stub(), _caches(4), 4, 4, "cpu", "torch", eager=True)
    assert graphs.capture() == [1, 2, 4] and graphs.capture() == [1, 2, 4]  # again: the same
    graphs.close()
    assert graphs.model is None and graphs.kv_caches == [] and graphs.hidden is None
    assert graphs.padded_size(1) is None


# ---------------------------------------------------------------- the real (tiny) model
@pytest.fixture(scope="module")
def llama(random_llama):
    from engine.model_loader import load_model

    return load_model(str(random_llama), dtype=torch.float32, device=torch.device("cpu"))


def _random_caches(loaded, num_blocks: int, seed: int = 0):
    cfg = loaded.hf_config
    kv_heads = cfg.num_key_value_heads
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    gen = torch.Generator().manual_seed(seed)
    dims = (num_blocks, BLOCK, kv_heads, head_dim)
    return [
        (torch.randn(dims, generator=gen), torch.randn(dims, generator=gen))
        for _ in range(cfg.num_hidden_layers)
    ]


def _clone(caches):
    return [(k.clone(), v.clone()) for k, v in caches]


@pytest.mark.parametrize("n", [1, 3, 5])
def test_padded_batch_gives_the_unpadded_rows_and_writes_no_padding_slot(llama, n):
    """The CPU stand-in for a replay: the padded batch through the same buffers, run
    eagerly. Its first n hidden rows are the unpadded batch's; it writes exactly the real
    rows' cache slots, the same values; the padding rows' results are finite."""
    model = llama.model
    tables = [[3], [5, 7], [1], [9, 10, 11], [2]][:n]
    seq_lens = [6, 10, 4, 20, 8][:n]
    meta = _decode_meta(tables, seq_lens)
    ids = torch.tensor([17, 99, 4, 250, 63][:n])
    positions = torch.tensor(seq_lens) - 1
    original = _random_caches(llama, 12)

    eager_caches = _clone(original)
    with torch.inference_mode():
        expected = model(ids, positions, eager_caches, meta)

    graph_caches = _clone(original)
    graphs = DecodeGraphs(model, graph_caches, 8, 4, "cpu", "torch", eager=True)
    graphs.capture()
    size = graphs.padded_size(n)
    assert size == {1: 1, 3: 4, 5: 8}[n]
    hidden = graphs.run(ids, positions, meta)

    assert hidden.shape == expected.shape
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(graphs.hidden[:size]).all()
    real_slots = set(meta.slot_mapping.tolist())
    for (k0, v0), (k1, v1), (k2, v2) in zip(original, graph_caches, eager_caches):
        for before, after, eager in ((k0, k1, k2), (v0, v1, v2)):
            changed = (after != before).flatten(2).any(-1).flatten().nonzero().flatten()
            assert set(changed.tolist()) == real_slots
            torch.testing.assert_close(after, eager, rtol=1e-5, atol=1e-5)
