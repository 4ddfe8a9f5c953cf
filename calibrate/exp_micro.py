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
    from xpusim.calibrate.suites import _no_grad, _randn

    a = _randn(int(s["numel"]), dtype=dtype, device=device)
    return _no_grad(lambda: torch.exp(a))
