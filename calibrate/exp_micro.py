"""The ``exp`` microbenchmark: ``torch.exp`` over a contiguous fp32 vector.

FastAttention's online softmax calls ``torch.exp`` twice per block
(``kernels/attention.py``). On an MKL build of torch that is not the Sleef exp that
``F.silu`` and ``torch.softmax`` run inside their loops: ATen's unary exp kernel calls
``at::vml::vexp``, which ``ATen/cpu/vml.h`` (torch 2.13.0, git cf30153c, as shipped in the
wheel's ``include/``) specialises for float to MKL's ``vmsExp(n, in, out, VML_HA | ...)``.
MKL's instruction count is not published, so the op is priced as an ``exp``-kind
elementwise op of ``EXP_FLOPS`` per element and the fit gives the kind its own speed
and overhead from these timings (``calibrate/fit.py``: every non-reference kind seen in
>= 3 fit cases). Full-mode sizes are the ``add`` / ``silu`` suites' (below 32 MB: no first-touch
page faults).
"""

from __future__ import annotations

from collections.abc import Callable

from xpusim.sim import ops
from xpusim.sim.ir import Op, OpKind
from xpusim.sim.workloads import attention
from xpusim.sim.workloads.attention import EXP_FLOPS

Shape = dict[str, float]

# Quick mode: the add / silu quick sizes plus 32768, so that its seeded split leaves the
# fit the 3 cases a kind needs for its own speed (the full sizes are the suites' own).
EXP_NUMELS_QUICK = (4096, 32768, 262144, 4194304)


def exp_ops(s: Shape, dtype: str) -> list[Op]:
    """One read, one write and ``EXP_FLOPS`` vector FLOPs per element, kind ``exp``."""
    return [ops.elementwise("exp", s["numel"], dtype, EXP_FLOPS, 1, 1, OpKind.EXP)]


def exp_runner(s: Shape, dtype: str, device: str) -> Callable[[], object]:
    """``torch.exp(a)`` for a contiguous vector ``a`` of ``numel`` elements."""
    import torch
    from xpusim.calibrate.kernel_runners import inference_mode, seeded_randn

    a = seeded_randn(int(s["numel"]), dtype=dtype, device=device)
    return inference_mode(lambda: torch.exp(a))


# The masked variant: rows of MASK_ROW elements whose last MASKED_PER_ROW are -inf, the
# layout of a causal block's scores (each row's masked keys are its tail). 3/4 masked, not
# 1/2, so the exp_masked op carries more than MIN_KIND_SHARE (calibrate/fit.py) of every
# case at the start profile, where both ops cost the same per element (at exactly 1/2 the
# share would sit on the threshold). Timed on the dev CPU (1 thread, 36,864 floats):
# ordinary 6.7 us, half -inf as row tails 67 us, 3/4 -inf alternating 111 us, all -inf
# 127 us: ~3.4-4 ns per -inf element whatever the layout.
MASK_ROW = 128
MASKED_PER_ROW = 96


def exp_masked_ops(s: Shape, dtype: str) -> list[Op]:
    """``attention.exp_ops``: an ``exp`` op over the ordinary elements and an
    ``exp_masked`` op over the -inf ones, as FastAttention's describe() states them."""
    n = s["numel"]
    return attention.exp_ops("exp", n, n * MASKED_PER_ROW / MASK_ROW)


def exp_masked_runner(s: Shape, dtype: str, device: str) -> Callable[[], object]:
    """``torch.exp(a)`` with the last ``MASKED_PER_ROW`` of every ``MASK_ROW`` elements -inf."""
    import torch
    from xpusim.calibrate.kernel_runners import inference_mode, seeded_randn

    a = seeded_randn(int(s["numel"]), dtype=dtype, device=device)
    a.view(-1, MASK_ROW)[:, MASK_ROW - MASKED_PER_ROW :] = float("-inf")
    return inference_mode(lambda: torch.exp(a))
