"""The CPU matmul paths of engine/models/layers.py against torch's plain F.linear."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.models import layers


@pytest.mark.parametrize("rows", [1, 5, 64])
def test_float32_linear_matches_f_linear(rows):
    torch.manual_seed(0)
    x, w, b = torch.randn(rows, 96), torch.randn(200, 96), torch.randn(200)
    torch.testing.assert_close(layers.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layers.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_float32_linear_takes_onednn_where_it_exists(monkeypatch):
    if not layers._ONEDNN:
        pytest.skip("this torch build has no oneDNN")
    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, *args):
            calls.append(args[0].shape)
            return real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    layers.linear(torch.randn(3, 8), torch.randn(4, 8))
    assert calls == [torch.Size([3, 8])]


def test_widening_linear_over_many_chunks_is_the_float32_matmul(monkeypatch):
    torch.manual_seed(1)
    # 64 columns of 4 bytes = 256 bytes a row: 1 KiB chunks hold 4 rows, so 30 rows take 8.
    monkeypatch.setattr(layers, "WIDEN_CHUNK_BYTES", 1024)
    monkeypatch.setattr(layers, "_scratch", layers._Scratch())
    x = torch.randn(7, 64)
    w = torch.randn(30, 64).bfloat16()
    b = torch.randn(30).bfloat16()
    want = F.linear(x, w.float(), b.float())
    torch.testing.assert_close(layers.widening_linear(x, w, b), want, rtol=1e-5, atol=1e-5)


def test_bf16_rows_go_through_float32_and_one_row_stays_bf16(monkeypatch):
    torch.manual_seed(2)
    widened = []
    real = layers.widening_linear
    monkeypatch.setattr(layers, "widening_linear",
                        lambda x, *a: widened.append(x.shape[0]) or real(x, *a))  # fmt: skip
    w = torch.randn(50, 32).bfloat16()
    many = torch.randn(6, 32).bfloat16()
    want = F.linear(many.float(), w.float()).bfloat16()
    torch.testing.assert_close(layers.linear(many, w), want, rtol=1e-2, atol=1e-2)
    assert layers.linear(many, w).dtype == torch.bfloat16
    one = many[:1]
    assert layers.linear(one, w).dtype == torch.bfloat16
    torch.testing.assert_close(layers.linear(one, w), want[:1], rtol=2e-2, atol=2e-2)
    assert widened == [6, 6]  # the two 6-row calls; the one-row calls stayed bf16


ROW_COUNTS_SCRIPT = """
import os, sys
os.environ.pop("ONEDNN_PRIMITIVE_CACHE_CAPACITY", None)
os.environ.pop("LRU_CACHE_CAPACITY", None)
import torch
torch.set_num_threads(1)
from engine.models import layers

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

weights = [torch.randn(o, i) for i, o in [(576, 960), (576, 3072), (1536, 576)]]
def step(rows):
    for w in weights:
        layers.linear(torch.randn(rows, w.shape[1]), w)
for rows in range(1, 65):
    step(rows)
before = rss_mib()
for rows in range(65, 365):  # 300 more row counts, as a server's mixed steps have
    step(rows)
print(rss_mib() - before)
"""


@pytest.mark.skipif(not layers._ONEDNN or not os.path.exists("/proc/self/statm"),
                    reason="oneDNN's primitive cache; RSS from /proc")
def test_new_row_counts_do_not_grow_memory_without_bound():
    """Each new row count makes oneDNN primitives (~0.5 MB each, kernel code included); the
    caches are bounded, so 300 new shapes cost a few MB, not the ~500 MB an unbounded
    cache holds (measured without the bound: 856 MB for 400 row counts of 4 shapes)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", ROW_COUNTS_SCRIPT], cwd=root, check=True,
                         capture_output=True, text=True, timeout=300)
    growth_mib = float(out.stdout.strip().splitlines()[-1])
    assert growth_mib < 100, growth_mib
