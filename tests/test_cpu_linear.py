"""pagedesk's CPU linear (kernels/cpu_linear.py) against torch's matmul: float32 weights
against x @ W.T, bfloat16-stored weights against x @ W.T with W rounded to bfloat16 (the
kernel's arithmetic is float32 either way), at every row-group size, ragged shapes and 1 and
2 threads."""

from __future__ import annotations

import pytest
import torch

from kernels import cpu_linear

pytestmark = pytest.mark.skipif(cpu_linear.load() is None, reason="needs AVX2/FMA and a C++ compiler")


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stored: torch.dtype):
    w = weight.to(stored).double()  # as stored, then exact products and sums
    out = x.double() @ w.T
    return (out + bias.double() if bias is not None else out).float()


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7, 13, 64])
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_matches_matmul_for_every_row_group(stored, rows, threads):
    torch.manual_seed(rows)
    weight, x = torch.randn(200, 96), torch.randn(rows, 96)
    bias = torch.randn(200)
    packed = cpu_linear.pack(weight, stored)
    assert packed.shape == (13, 96, 16) and packed.dtype == stored
    got = cpu_linear.linear(x, packed, bias, 200)
    torch.testing.assert_close(got, reference(x, weight, bias, stored), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out_features,in_features", [(1, 1), (17, 3), (40, 577), (961, 64)])
def test_ragged_shapes_write_only_their_outputs(stored, out_features, in_features):
    torch.manual_seed(out_features)
    weight, x = torch.randn(out_features, in_features), torch.randn(3, in_features)
    got = cpu_linear.linear(x, cpu_linear.pack(weight, stored), None, out_features)
    assert got.shape == (3, out_features)
    torch.testing.assert_close(got, reference(x, weight, None, stored), rtol=1e-5, atol=1e-4)


def test_leading_dimensions_and_a_strided_input():
    torch.manual_seed(0)
    weight = torch.randn(48, 32)
    packed = cpu_linear.pack(weight)
    x = torch.randn(2, 3, 64)[..., ::2]  # not contiguous
    got = cpu_linear.linear(x, packed, None, 48)
    assert got.shape == (2, 3, 48)
    torch.testing.assert_close(got, x @ weight.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
def test_unpack_reads_back_the_stored_matrix(stored):
    weight = torch.randn(37, 20)
    back = cpu_linear.unpack(cpu_linear.pack(weight, stored), 37)
    assert back.dtype == stored
    torch.testing.assert_close(back, weight.to(stored), rtol=0, atol=0)


def test_bad_arguments_name_the_problem():
    packed = cpu_linear.pack(torch.randn(32, 8))
    with pytest.raises(RuntimeError, match="float32"):
        cpu_linear.linear(torch.randn(2, 8, dtype=torch.float64), packed, None, 32)
    with pytest.raises(RuntimeError, match="in_features=9"):
        cpu_linear.linear(torch.randn(2, 9), packed, None, 32)
    with pytest.raises(RuntimeError, match="40 outputs"):
        cpu_linear.linear(torch.randn(2, 8), packed, None, 40)
    with pytest.raises(RuntimeError, match="bias must have 32"):
        cpu_linear.linear(torch.randn(2, 8), packed, torch.randn(31), 32)
    with pytest.raises(ValueError, match="2-D weight"):
        cpu_linear.pack(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        cpu_linear.pack(torch.randn(4, 4), torch.float16)
