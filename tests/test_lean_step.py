"""The lean step: a persistent block table, vectorised inputs, one attention plan per step,
and a sampler that reads the device back once.

Each test checks the fast path against the slow, obvious construction it replaced."""

from __future__ import annotations

import random

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.block_table import BlockTable
from engine.request import Request
from engine.sampler import Sampler
from engine.scheduler import ScheduledRequest, SchedulerOutput
from kernels import reference


# ---------------------------------------------------------------- block table
def test_block_table_writes_only_new_blocks_and_rewrites_a_new_allocation():
    table = BlockTable(max_num_seqs=4, max_blocks_per_seq=8)
    live = {"a": [3, 5], "b": [7]}
    rows = table.rows_for(["a", "b"], live)
    assert table.array[rows[0], :2].tolist() == [3, 5]
    assert table.array[rows[1], :1].tolist() == [7]
    # Mark what was written: an incremental update must leave it alone.
    table.array[rows[0], :2] = -9
    live["a"].append(6)
    rows = table.rows_for(["a", "b"], live)
    assert table.array[rows[0], :3].tolist() == [-9, -9, 6]
    # A new list (preempted, then admitted again) is a new allocation: the row is rewritten.
    live["a"] = [1, 2]
    rows = table.rows_for(["a"], live)
    assert table.array[rows[0], :2].tolist() == [1, 2]


def test_block_table_gives_back_rows_of_requests_not_in_the_step():
    table = BlockTable(max_num_seqs=2, max_blocks_per_seq=4)
    table.rows_for(["a", "b"], {"a": [1], "b": [2]})
    rows = table.rows_for(["c", "d"], {"c": [3], "d": [4]})  # a and b have finished
    assert sorted(rows.tolist()) == [0, 1]
    with pytest.raises(ValueError, match="more than the table's 4"):
        table.rows_for(["c"], {"c": [1, 2, 3, 4, 5]})


# ---------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def tiny_engine(random_llama) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(random_llama), device="cpu", dtype="float32",
                                  block_size=4, num_kv_blocks=64, max_num_seqs=8))  # fmt: skip


def _naive_inputs(sched: SchedulerOutput, tables: dict[str, list[int]], bs: int):
    """The per-token loops prepare_inputs replaced."""
    ids, positions, slots, cu, lens, rows = [], [], [], [0], [], []
    for item in sched.scheduled:
        table = tables[item.request.request_id]
        for p in range(item.start, item.start + item.num_new_tokens):
            ids.append(item.request.all_token_ids[p])
            positions.append(p)
            slots.append(table[p // bs] * bs + p % bs)
        cu.append(cu[-1] + item.num_new_tokens)
        lens.append(item.start + item.num_new_tokens)
        if item.samples:
            rows.append(cu[-1] - 1)
    return ids, positions, slots, cu, lens, rows


def test_prepare_inputs_matches_the_per_token_construction(tiny_engine):
    rng = random.Random(0)
    bs = tiny_engine.config.block_size
    scheduled, tables = [], {}
    for i, (prompt_len, computed, new) in enumerate([(9, 0, 9), (13, 4, 5), (20, 19, 1), (6, 5, 1)]):
        request = Request(f"r{i}", [rng.randrange(200) for _ in range(prompt_len)],
                          SamplingParams(), 0.0)  # fmt: skip
        request.num_computed_tokens = computed
        scheduled.append(ScheduledRequest(request, new))
        tables[request.request_id] = rng.sample(range(64), -(-(computed + new) // bs))
    sched = SchedulerOutput(scheduled)
    ids, positions, meta, sample_rows = tiny_engine.runner.prepare_inputs(sched, tables)
    want = _naive_inputs(sched, tables, bs)
    assert ids.tolist() == want[0]
    assert positions.tolist() == want[1]
    assert meta.slot_mapping.tolist() == want[2]
    assert meta.slot_mapping.dtype == torch.int64  # AttentionMetadata's contract
    assert meta.cu_query_lens.tolist() == want[3]
    assert meta.seq_lens.tolist() == want[4]
    assert sample_rows.tolist() == want[5]
    for row, item in zip(meta.block_tables.tolist(), scheduled):
        table = tables[item.request.request_id]
        assert row[: len(table)] == table
    assert (meta.max_query_len, meta.max_seq_len) == (9, 20)


@pytest.mark.parametrize("decode_kernel", [True, False], ids=["cpu-kernel", "torch-gather"])
def test_one_attention_plan_per_step_shared_by_every_layer(tiny_engine, monkeypatch, decode_kernel):
    """One plan per step; the decodes' block tables (for the CPU kernel) or their K/V gather
    (the torch path) made once per step for both layers."""
    made, built = [], []
    plan_cls = reference.AttentionPlan
    real_init, real_gather = plan_cls.__init__, plan_cls._make_decode_gather
    real_tables = plan_cls.decode_tables

    def counting_init(self, *args, **kwargs):
        made.append(self)
        real_init(self, *args, **kwargs)

    def counting_gather(self, window):
        built.append(("gather", window))
        return real_gather(self, window)

    def counting_tables(self):
        if self._decode_tables is None:
            built.append(("tables", None))
        return real_tables(self)

    monkeypatch.setattr(plan_cls, "__init__", counting_init)
    monkeypatch.setattr(plan_cls, "_make_decode_gather", counting_gather)
    monkeypatch.setattr(plan_cls, "decode_tables", counting_tables)
    if not decode_kernel:
        monkeypatch.setattr(tiny_engine.runner, "decode_kernel", None)
    else:
        assert tiny_engine.runner.decode_kernel is not None, "the CPU decode kernel did not build"
    tiny_engine.add_request("plan", [5, 6, 7], SamplingParams(max_tokens=3, ignore_eos=True))
    steps = 0
    while tiny_engine.has_unfinished_requests():
        tiny_engine.step()
        steps += 1
    assert tiny_engine.loaded.hf_config.num_hidden_layers == 2
    assert len(made) == steps == 3  # one per step, not one per layer
    kind = "tables" if decode_kernel else "gather"
    assert built == [(kind, None)] * 2  # the two decode steps, each once for both layers


# ---------------------------------------------------------------- sampler
def _requests(n: int, **params) -> list[Request]:
    return [Request(f"s{i}", [1, 2, 3], SamplingParams(**params), 0.0) for i in range(n)]


def test_sampler_reads_the_device_back_in_one_pass(monkeypatch):
    """No int()/float() of single elements: each would be a device sync per row on CUDA."""
    logits = torch.randn(6, 50)
    requests = _requests(6, logprobs=3, temperature=0.0)
    expected = Sampler(torch.device("cpu"))(logits, requests)

    def refuse(self, *args):
        raise AssertionError("per-element read of a tensor")

    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "__int__", refuse)
    monkeypatch.setattr(torch.Tensor, "__float__", refuse)
    out = Sampler(torch.device("cpu"))(logits, requests)
    monkeypatch.undo()
    assert out.token_ids == expected.token_ids == logits.argmax(-1).tolist()
    lp = logits.log_softmax(-1)
    for i, t in enumerate(out.token_ids):
        assert out.chosen_logprobs[i] == pytest.approx(float(lp[i, t]), abs=1e-6)
        assert len(out.logprobs[i]) == 3


def test_unseeded_rows_share_one_noise_draw_and_seeded_rows_keep_their_own(monkeypatch):
    calls = []
    real = torch.Tensor.exponential_

    def counting(self, *args, **kwargs):
        calls.append(self.shape)
        return real(self, *args, **kwargs)

    logits = torch.randn(10, 50)
    logits[9] = logits[8]
    requests = _requests(8, temperature=1.0) + _requests(2, temperature=1.0, seed=7)
    for r in requests[8:]:
        r.generator = torch.Generator().manual_seed(7)
    monkeypatch.setattr(torch.Tensor, "exponential_", counting)
    out = Sampler(torch.device("cpu"))(logits, requests)
    assert len(calls) == 3  # one batched draw + one per seeded row (was one per row)
    # The two seeded rows got the same noise from the same seed: the same token.
    assert out.token_ids[8] == out.token_ids[9]
