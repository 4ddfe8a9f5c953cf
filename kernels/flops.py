"""Count the FLOPs a real PyTorch kernel executes, for checking ``describe()`` builders.

PyTorch's ``FlopCounterMode`` intercepts aten ops and counts the matrix products
(mm, bmm, addmm, baddbmm, convolution, scaled_dot_product_attention); elementwise
ops count zero. So a description is compared on its GEMM (and conv) FLOPs only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """Run ``fn(*args, **kwargs)`` under ``FlopCounterMode``; return (total FLOPs, result)."""
    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return counter.get_total_flops(), result


def flops_by_op(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, int]:
    """FLOPs per aten op name (e.g. ``{"bmm": 2.1e9}``) for a run of ``fn``."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    per_op = counter.get_flop_counts().get("Global", {})
    return {
        str(op).split(".")[-1] if "." in str(op) else str(op): int(n) for op, n in per_op.items()
    }


def relative_error(described: float, measured: float) -> float:
    """|described - measured| / measured (0 when both are 0)."""
    if measured == 0:
        return 0.0 if described == 0 else float("inf")
    return abs(described - measured) / measured
