"""Compile every kernel variant the engine can launch for sm_90 (H100/H200) and sm_80 (A100)
without a GPU: `triton.compile(ASTSource(...), target=GPUTarget(...))` runs the whole
pipeline down to a cubin (the wheel carries ptxas). This catches what the interpreter lets
through: tl.dot shape rules, type errors, shared memory beyond the chip's limit, and
register spills (read back from the cubin with cuobjdump).

A compile takes ~1-2 s here (fp32 up to ~5 s), so instead of the full product
(3 dtypes x 5 head sizes x 5 block sizes x GQA ratios x decode/prefill/split x 2 targets)
the cases below cover every dtype x head size pair in prefill (the heaviest variant) on
sm_90 and in split-KV decode on sm_80, the heaviest shapes on both targets, every block
size 8..128 and GQA ratios 1/3/4/8 spread over those, non-split decode, the reduce kernel
for every padded head size (the segment count is a runtime argument: one reduce variant
serves 1..MAX_SEGMENTS), and store_kv for every dtype. The sliding-window and
soft-capping variants (SLIDING / SOFTCAP, separately and together) compile for prefill,
decode and split-KV on both targets, on the heaviest head size and on fp32. Configurations
come from `choose_config`, the function the launcher uses, so the test follows any change
of tiles. Compiles are cached by Triton (~/.triton/cache):
a rerun without kernel changes takes seconds.

Runs in a child process when this process's kernels are interpreted (TRITON_INTERPRET=1):
the compiler needs real @triton.jit functions. tests/test_kernels_compile_triton36.py runs
this file again under the GPU machines' triton (3.6).

Also here: the variants a growing context launches (test_context_growth_compiles_nothing_new),
with the kernels replaced by recorders, so nothing needs a GPU.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile

import pytest
import torch

from kernels.testing import run_pytest_file, triton_mode_is_interpreted

if triton_mode_is_interpreted():

    def test_compile_suite_in_child_process():
        rc, log = run_pytest_file(__file__, interpret=False)
        assert rc == 0, log[-6000:]

else:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import triton_attention as ta
    from kernels import triton_store_kv as ts

    TARGETS = {90: 232448, 80: 166912}  # max dynamic shared memory per block (bytes)
    DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    HEAD_SIZES = (64, 80, 96, 128, 256)
    BLOCK_SIZES = (8, 16, 32, 64, 128)
    GQA = ((8, 8), (12, 4), (32, 8), (32, 4))  # (num_heads, num_kv_heads): ratios 1, 3, 4, 8
    # A spill of a few bytes (sm_80 prefill) costs nothing measurable; more would.
    MAX_STACK_BYTES = 64
    # PAGEDESK_COMPILE_CC=90 compiles every case for that target alone (the triton 3.6 run:
    # the GPU machines are H100/H200, so every variant for sm_90).
    ONLY_CC = int(os.environ.get("PAGEDESK_COMPILE_CC") or 0)

    def _target(cc: int) -> int:
        return ONLY_CC or cc

    def _signature(fn, types: dict[str, str], constexprs: dict) -> dict[str, str]:
        sig = {}
        for name in fn.arg_names:
            if name in constexprs:
                sig[name] = "constexpr"
            elif name in types:
                sig[name] = types[name]
            else:
                sig[name] = "i32"
        return sig

    def _compile(fn, types, constexprs, cc, num_warps, num_stages=2):
        cc = _target(cc)
        sig = _signature(fn, types, constexprs)
        # At launch Triton marks pointers and ints divisible by 16 (all our pointers and
        # strides are, except what the kernel keeps generic): without the same hint the
        # compiler cannot vectorise loads and the register counts here would not be the
        # ones the GPU runs with.
        generic = {p.name for p in fn.params if p.do_not_specialize}
        attrs = {
            (i,): [["tt.divisibility", 16]]
            for i, (name, kind) in enumerate(sig.items())
            if (kind.startswith("*") or name.startswith("stride")) and name not in generic
        }
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
        return triton.compile(
            src,
            target=GPUTarget("cuda", cc, 32),
            options={"num_warps": num_warps, "num_stages": num_stages},
        )

    def _resources(kernel) -> dict[str, int] | None:
        """REG / STACK / SHARED of the cubin's function, via the wheel's cuobjdump."""
        tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
        if not os.path.exists(tool):
            tool = shutil.which("cuobjdump")
        if not tool:
            return None
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            text = subprocess.run(
                [tool, "-res-usage", f.name], capture_output=True, text=True
            ).stdout
        line = next(ln for ln in text.splitlines() if "REG:" in ln)
        return {k: int(v) for k, v in (f.split(":") for f in line.split()[:4])}

    def _check(kernel, cc: int) -> None:
        cc = _target(cc)
        assert kernel.asm["ptx"] and kernel.asm["cubin"]
        assert kernel.metadata.shared <= TARGETS[cc], f"shared {kernel.metadata.shared}"
        res = _resources(kernel)
        if res is not None:
            assert res["STACK"] <= MAX_STACK_BYTES, f"register spills: {res}"

    def _attention_types(dtype: torch.dtype, split: bool) -> dict[str, str]:
        t = "*" + DTYPES[dtype]
        i32 = "*i32"
        f32 = "*fp32" if split else t  # without split the launcher passes `out` there
        return {
            "out_ptr": t, "q_ptr": t, "k_cache_ptr": t, "v_cache_ptr": t,
            "block_tables_ptr": i32, "seq_lens_ptr": i32, "cu_q_ptr": i32,
            "seg_acc_ptr": f32, "seg_m_ptr": f32, "seg_l_ptr": f32, "qk_scale": "fp32",
            "softcap_log2": "fp32", "window": "i32",
        }  # fmt: skip

    def _config(dtype, head_dim, block_size, heads, mode, options=""):
        """mode: 'prefill', 'decode' (no split) or 'split' (flash-decoding, auto segments);
        options: 'w' (sliding window), 'c' (softcap) or both."""
        num_heads, num_kv_heads = heads
        decode = mode != "prefill"
        num_seqs = 2 if mode == "split" else 64
        return ta.choose_config(
            num_tokens=num_seqs if decode else 4096,
            num_seqs=num_seqs,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            block_size=block_size,
            dtype=dtype,
            max_context_bound=8192,
            num_sms=132,
            decode_only=decode,
            num_segments=None if mode == "split" else 1,
            sliding_window=4096 if "w" in options else None,
            softcap=50.0 if "c" in options else None,
        )

    def _attention_cases():
        cases = []
        blocks = itertools.cycle(BLOCK_SIZES)
        gqa = itertools.cycle(GQA)
        for dtype, head in itertools.product(DTYPES, HEAD_SIZES):
            cases.append((dtype, head, next(blocks), next(gqa), "prefill", 90))
            cases.append((dtype, head, next(blocks), next(gqa), "split", 80))
        # the heaviest shapes on the other target too, and decode without split
        for dtype in DTYPES:
            cases.append((dtype, 256, 16, (32, 8), "prefill", 80))
            cases.append((dtype, 128, 16, (32, 8), "decode", 90))
        cases.append((torch.bfloat16, 128, 128, (32, 8), "split", 90))
        cases.append((torch.float16, 64, 8, (9, 3), "decode", 80))
        # sliding window ('w'), softcap ('c') and both (Mistral, Gemma 2: d256, GQA 2)
        cases.append((torch.bfloat16, 256, 16, (16, 8), "prefill", 90, "wc"))
        cases.append((torch.bfloat16, 256, 16, (16, 8), "prefill", 80, "wc"))
        cases.append((torch.float16, 128, 16, (32, 8), "prefill", 90, "w"))
        cases.append((torch.bfloat16, 128, 32, (32, 4), "prefill", 80, "c"))
        cases.append((torch.bfloat16, 256, 16, (16, 8), "split", 90, "wc"))
        cases.append((torch.float16, 128, 16, (32, 8), "split", 80, "w"))
        cases.append((torch.bfloat16, 128, 16, (32, 8), "decode", 90, "wc"))
        cases.append((torch.float32, 256, 16, (16, 8), "prefill", 90, "wc"))
        cases.append((torch.float32, 128, 16, (32, 8), "split", 80, "wc"))
        return cases

    def _case_id(case):
        dtype, head, block, heads, mode, cc, *options = case
        opts = f"-{options[0]}" if options else ""
        return f"{DTYPES[dtype]}-d{head}-bs{block}-g{heads[0] // heads[1]}-{mode}-sm{cc}{opts}"

    @pytest.mark.parametrize("case", _attention_cases(), ids=_case_id)
    def test_attention_kernel_compiles(case):
        dtype, head, block, heads, mode, cc, *options = case
        cfg = _config(dtype, head, block, heads, mode, *options)
        assert cfg.split == (mode == "split")
        kernel = _compile(
            ta._attention_kernel,
            _attention_types(dtype, cfg.split),
            ta.kernel_constexprs(cfg, dtype, interpret=False),
            cc,
            cfg.num_warps,
            cfg.num_stages,
        )
        _check(kernel, cc)

    @pytest.mark.parametrize(
        "dtype,head,cc",
        [
            (torch.bfloat16, 64, 90),
            (torch.float16, 80, 80),
            (torch.bfloat16, 128, 90),
            (torch.float32, 128, 80),
            (torch.float16, 256, 90),
            (torch.bfloat16, 256, 80),
        ],
        ids=lambda v: str(v).replace("torch.", ""),
    )
    def test_reduce_kernel_compiles(dtype, head, cc):
        types = {"out_ptr": "*" + DTYPES[dtype], "seg_acc_ptr": "*fp32",
                 "seg_m_ptr": "*fp32", "seg_l_ptr": "*fp32"}  # fmt: skip
        cfg = _config(dtype, head, 16, (32, 8), "split")
        constexprs = ta.reduce_constexprs(cfg)
        assert constexprs["HEAD_PAD"] == triton.next_power_of_2(head)
        kernel = _compile(ta._reduce_segments_kernel, types, constexprs, cc, num_warps=4)
        _check(kernel, cc)

    def test_auto_split_stays_within_max_segments():
        seen = set()
        for seqs, kv, bound in itertools.product((1, 2, 4, 16, 64, 256), (1, 2, 8), (16, 512, 8192)):
            cfg = ta.choose_config(
                num_tokens=seqs, num_seqs=seqs, num_heads=kv * 4, num_kv_heads=kv,
                head_dim=128, block_size=16, dtype=torch.bfloat16,
                max_context_bound=bound, num_sms=132, decode_only=True,
            )  # fmt: skip
            assert cfg.split == (seqs * kv < 132)
            assert cfg.split or cfg.num_segments == 1
            seen.add(cfg.num_segments)
        assert seen <= {1, *ta.SEGMENT_CHOICES}
        assert 1 in seen and ta.MAX_SEGMENTS in seen

    class _Recorder:
        """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records what
        decides the compiled variant instead of launching. That is every keyword (the
        constexprs, num_warps, num_stages) and, for each positional argument Triton may
        specialise on (not in do_not_specialize), its class: an int's `== 1` / `% 16 == 0`,
        a tensor's dtype and 16-byte alignment."""

        def __init__(self, kernel, log: list):
            self.kernel, self.log = kernel, log

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                generic = {p.name for p in self.kernel.params if p.do_not_specialize}
                spec = []
                for name, value in zip(self.kernel.arg_names, args):
                    if name in generic:
                        continue
                    if isinstance(value, torch.Tensor):
                        spec.append((name, value.dtype, value.data_ptr() % 16 == 0))
                    elif isinstance(value, int):
                        spec.append((name, value == 1, value % 16 == 0))
                self.log.append((self.kernel.__name__, tuple(sorted(kwargs.items())), tuple(spec)))

            return launch

    def _variants_launched(monkeypatch, num_seqs: int, context_lens, hints: bool) -> set:
        """The variants a decode batch of num_seqs sequences launches at each context length
        (Llama-3-8B's heads; the tensors are only shapes: nothing runs)."""
        log: list = []
        monkeypatch.setattr(ta, "_attention_kernel", _Recorder(ta._attention_kernel, log))
        monkeypatch.setattr(ta, "_reduce_segments_kernel", _Recorder(ta._reduce_segments_kernel, log))
        monkeypatch.setattr(ta, "_num_sms", lambda device: 132)  # an H100's count
        q = torch.zeros(num_seqs, 32, 128, dtype=torch.bfloat16)
        k_cache = torch.zeros(4, 16, 8, 128, dtype=torch.bfloat16)
        cu = torch.arange(num_seqs + 1, dtype=torch.int32)
        for ctx in context_lens:
            seq_lens = torch.full((num_seqs,), ctx, dtype=torch.int32)
            tables = torch.zeros(num_seqs, -(-ctx // 16), dtype=torch.int32)  # grows too
            kw = {"max_query_len": 1, "max_seq_len": ctx} if hints else {}
            ta.unified_attention_triton(q, k_cache, k_cache, cu, seq_lens, tables, 0.1, **kw)
        return set(log)

    @pytest.mark.parametrize("num_seqs", [1, 4, 64])
    @pytest.mark.parametrize("hints", [True, False], ids=["hints", "shapes"])
    def test_context_growth_compiles_nothing_new(monkeypatch, num_seqs, hints):
        """A decode batch whose contexts grow from 1 to 5,000 tokens launches the same
        compiled variants all along: the split-KV segment count follows the context as a
        runtime argument, never as a constexpr (each new one used to compile mid-serving)."""
        contexts = [1, 16, 17, 64, 65, 100, 1000, 5000]
        variants = _variants_launched(monkeypatch, num_seqs, contexts, hints)
        by_kernel = {}
        for name, *_ in variants:
            by_kernel[name] = by_kernel.get(name, 0) + 1
        assert by_kernel.pop("_attention_kernel") == 1, sorted(variants)
        assert by_kernel.pop("_reduce_segments_kernel", 1) == 1, sorted(variants)
        assert not by_kernel
        (attention,) = [kwargs for name, kwargs, _ in variants if name == "_attention_kernel"]
        assert dict(attention)["SPLIT"] == (num_seqs * 8 < 132)

    def test_segment_count_is_a_runtime_argument():
        for kernel in (ta._attention_kernel, ta._reduce_segments_kernel):
            generic = {p.name for p in kernel.params if p.do_not_specialize}
            assert "num_segments" in kernel.arg_names and "num_segments" in generic
            assert not {"NUM_SEGMENTS"} & set(kernel.arg_names)

    @pytest.mark.parametrize(
        "dtype,kv_heads,head,cc",
        [
            (torch.float16, 8, 128, 90),
            (torch.bfloat16, 3, 64, 80),
            (torch.float32, 4, 80, 90),
            (torch.bfloat16, 32, 256, 90),
        ],
        ids=lambda v: str(v).replace("torch.", ""),
    )
    def test_store_kv_kernel_compiles(dtype, kv_heads, head, cc):
        t = "*" + DTYPES[dtype]
        types = {"key_ptr": t, "value_ptr": t, "k_cache_ptr": t, "v_cache_ptr": t,
                 "slot_ptr": "*i64"}  # fmt: skip
        kernel = _compile(ts._store_kv_kernel, types, ts.store_kv_meta(kv_heads, head), cc, 4)
        _check(kernel, cc)
