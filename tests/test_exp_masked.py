"""The -inf inputs of FastAttention's torch.exp: counted in describe(), priced as their
own kind (exp_masked), fitted from a masked-input `exp` microbenchmark."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from xpusim.calibrate.exp_micro import exp_masked_ops
from xpusim.calibrate.suites import SUITES, split_shapes
from xpusim.kernels.attention import fast_attention
from xpusim.sim.ir import OpKind
from xpusim.sim.workloads.attention import EXP_FLOPS, describe_fast_attention


class _ExpInputs(TorchDispatchMode):
    """Records (numel, -inf count) of the input of every aten.exp the kernel runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.exp.default:
            x = args[0]
            self.seen.append((x.numel(), int(torch.isinf(x).sum())))
        return func(*args, **(kwargs or {}))


def _described(graph) -> list[tuple[int, int]]:
    """(numel, masked) per torch.exp call: `.exp` opens a call, `.exp_masked` adds to it."""
    out: list[list[int]] = []
    for op in graph.ops():
        n = round(op.flops / EXP_FLOPS)
        if op.kind == OpKind.EXP_MASKED:
            out[-1][0] += n
            out[-1][1] += n
        elif op.kind == OpKind.EXP:
            out.append([n, 0])
    return [(a, b) for a, b in out]


CASES = [  # batch, heads, kv_heads, seq, kv_len, block, inner, q_offset, kv_lens
    (1, 2, 2, 200, 200, 64, 32, 0, None),
    (2, 4, 2, 96, 160, 32, 32, 64, None),  # GQA, bottom-right causal
    (3, 2, 1, 70, 90, 32, 16, 20, [90, 41, 7]),  # causal + padding
]


@pytest.mark.parametrize("case", CASES)
def test_described_masked_count_is_the_kernels(case):
    batch, heads, kvh, seq, kv_len, block, inner, q_offset, kv_lens = case
    torch.manual_seed(0)
    q = torch.randn(batch, heads, seq, 8)
    k = torch.randn(batch, kvh, kv_len, 8)
    v = torch.randn(batch, kvh, kv_len, 8)
    with _ExpInputs() as rec:
        fast_attention(q, k, v, True, None, block, inner, q_offset, kv_lens)
    graph = describe_fast_attention(batch, heads, seq, 8, True, kvh, kv_len, "fp32", block,
                                    inner, q_offset, kv_lens)
    assert _described(graph) == rec.seen
    assert sum(m for _, m in rec.seen) > 0


def test_non_causal_exp_has_no_masked_op():
    graph = describe_fast_attention(1, 2, 300, 16, False, outer_block=128)
    assert all(op.kind != OpKind.EXP_MASKED for op in graph.ops())


def test_causal_diagonal_block_masks_its_upper_triangle():
    # one 128 x 128 diagonal block, 2 heads: 128*127/2 = 8128 -inf scores per head
    graph = describe_fast_attention(1, 2, 128, 64, True, outer_block=128, inner_block=64)
    (masked,) = [op for op in graph.ops() if op.kind == OpKind.EXP_MASKED]
    (exp,) = [op for op in graph.ops() if op.name.endswith(".exp")]
    assert masked.flops == EXP_FLOPS * 2 * 8128
    assert exp.flops == EXP_FLOPS * 2 * (128 * 128 - 8128)
    assert dict(masked.bytes) == {"hbm": 8.0 * 2 * 8128}  # fp32 read + write


def test_masked_microbenchmark_states_its_masked_elements():
    ordinary, masked = exp_masked_ops({"numel": 4096.0}, "fp32")
    assert (ordinary.kind, masked.kind) == (OpKind.EXP, OpKind.EXP_MASKED)
    assert masked.flops == EXP_FLOPS * 3072 and ordinary.flops == EXP_FLOPS * 1024


def test_masked_microbenchmark_runner_masks_what_it_describes():
    tensor = SUITES["exp_masked"].build_runner({"numel": 4096.0}, "fp32", "cpu")
    with _ExpInputs() as rec:
        tensor()
    assert rec.seen == [(4096, 3072)]


def test_masked_suite_has_enough_fit_shapes():
    suite = SUITES["exp_masked"]
    assert suite.quick == SUITES["exp"].quick and suite.full == SUITES["exp"].full
    assert split_shapes("exp_masked", suite.quick, 20260).count("fit") >= 3
