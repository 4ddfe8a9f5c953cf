"""Builders of common ops: the one place that counts FLOPs and bytes for a GEMM,
an elementwise op, a softmax, a norm, a convolution and fused attention.

Every workload builder (kernels' ``describe()``, training and inference lowerings)
calls these, so FLOP and byte accounting is written once.
"""

from __future__ import annotations

from types import MappingProxyType

from xpusim.sim.errors import InputError
from xpusim.sim.ir import (
    MAIN_MEMORY,
    NO_ROLE,
    AttentionShape,
    ConvShape,
    ElementwiseShape,
    EmbeddingShape,
    GemmShape,
    MemcpyShape,
    NormShape,
    Op,
    OpKind,
    Role,
    SoftmaxShape,
    Unit,
    attention_pairs,
    dtype_bytes,
    is_low_precision,
)


def _check_positive(name: str, **sizes: float) -> None:
    # The ops built for every serving step shape (gemm, elementwise, fused_attention)
    # compare their sizes with 0 first and call this only to raise.
    for key, value in sizes.items():
        if value < 0:
            raise InputError(f"{name}: {key} must be >= 0, got {value}")


def _mem(nbytes: float) -> MappingProxyType:
    return MappingProxyType({MAIN_MEMORY: float(nbytes)})


def gemm(
    name: str,
    m: float,
    n: float,
    k: float,
    dtype: str = "bf16",
    batch: float = 1,
    out_dtype: str | None = None,
    read_a: bool = True,
    read_b: bool = True,
    role: Role = NO_ROLE,
    accumulate: bool = False,
    impl: str = "",
    group_rows: tuple[int, ...] = (),
) -> Op:
    """C[batch, m, n] = A[batch, m, k] @ B[batch, k, n]: 2*m*n*k*batch FLOPs.

    Bytes assume each operand crosses main memory once (the tiling keeps reuse on
    chip); ``read_b=False`` models weights already resident (rarely true).
    ``accumulate``: C += A @ B (beta = 1, e.g. a weight gradient added into the main
    gradient): the epilogue also reads C, in the output dtype. ``impl``: the library
    kernel that runs it (sim/cost/gemm_impl.py; "" the generic path). ``group_rows``: the
    rows of each of ``batch`` unequal groups, ``m`` their mean (``GemmShape.group_rows``).
    """
    if m < 0 or n < 0 or k < 0 or batch < 0:  # the check inlined: built per step shape
        _check_positive(name, m=m, n=n, k=k, batch=batch)
    b = dtype_bytes(dtype)
    # Low-precision GEMMs accumulate in fp32 and write a 16-bit output (cuBLASLt FP8 /
    # block-scaled GEMMs, TransformerEngine); a caller may still ask for another.
    out = out_dtype or ("bf16" if is_low_precision(dtype) else dtype)
    ob = dtype_bytes(out)
    c_moves = 2 * ob if accumulate else ob  # an accumulating epilogue reads C too
    nbytes = batch * ((m * k * b if read_a else 0) + (k * n * b if read_b else 0)
                      + m * n * c_moves)
    shape = GemmShape(m, n, k, batch, accumulate=out if accumulate else "", impl=impl,
                      group_rows=group_rows)
    return Op(
        name,
        OpKind.GEMM,
        2.0 * m * n * k * batch,
        _mem(nbytes),
        dtype,
        Unit.MATRIX,
        shape,
        role,
    )


def elementwise(
    name: str,
    numel: float,
    dtype: str = "bf16",
    flops_per_element: float = 1.0,
    inputs: float = 1,
    outputs: float = 1,
    kind: OpKind = OpKind.ELEMENTWISE,
    role: Role = NO_ROLE,
    shape: ElementwiseShape | NormShape | SoftmaxShape | None = None,
) -> Op:
    """A pointwise op over ``numel`` elements reading ``inputs`` and writing ``outputs`` tensors."""
    if numel < 0:
        _check_positive(name, numel=numel)
    b = dtype_bytes(dtype)
    return Op(
        name,
        kind,
        numel * flops_per_element,
        _mem(numel * b * (inputs + outputs)),
        dtype,
        Unit.VECTOR,
        shape or ElementwiseShape(numel),
        role,
    )


def softmax(name: str, rows: float, cols: float, dtype: str = "bf16", role: Role = NO_ROLE) -> Op:
    """Row softmax: max, subtract, exp, sum, divide ~ 5 FLOPs per element; one read, one write."""
    return elementwise(name, rows * cols, dtype, 5.0, 1, 1, OpKind.SOFTMAX, role,
                       SoftmaxShape(rows, cols))


def norm(name: str, tokens: float, hidden: float, dtype: str = "bf16", role: Role = NO_ROLE) -> Op:
    """RMSNorm / LayerNorm: ~5 FLOPs per element (square, sum, scale, weight, bias)."""
    return elementwise(name, tokens * hidden, dtype, 5.0, 1, 1, OpKind.NORM, role,
                       NormShape(tokens, hidden))


def memcpy(name: str, nbytes: float, role: Role = NO_ROLE) -> Op:
    _check_positive(name, nbytes=nbytes)
    return Op(name, OpKind.MEMCPY, 0.0, _mem(2.0 * nbytes), "bf16", Unit.DMA,
              MemcpyShape(nbytes), role)


def conv2d(
    name: str,
    batch: int,
    in_ch: int,
    out_ch: int,
    height: int,
    width: int,
    kernel: int,
    stride: int = 1,
    padding: int | None = None,
    dtype: str = "fp32",
    groups: int = 1,
) -> Op:
    """2-D convolution as an implicit GEMM: m = batch*H_out*W_out, n = out_ch, k = in_ch/groups*k*k.

    Output size per dimension (PyTorch Conv2d, dilation 1): (H + 2 pad - kernel) // stride + 1;
    an input smaller than the kernel (after padding) has no output position and is rejected.
    """
    _check_positive(name, batch=batch, in_ch=in_ch, out_ch=out_ch, height=height, width=width)
    for key, value in (("kernel", kernel), ("stride", stride), ("groups", groups)):
        if value < 1:
            raise InputError(f"{name}: {key} must be >= 1, got {value}")
    pad = kernel // 2 if padding is None else padding
    if pad < 0:
        raise InputError(f"{name}: padding must be >= 0, got {pad}")
    h_out = (height + 2 * pad - kernel) // stride + 1
    w_out = (width + 2 * pad - kernel) // stride + 1
    if h_out < 1 or w_out < 1:
        raise InputError(
            f"{name}: a {kernel}x{kernel} kernel with padding {pad} and stride {stride} leaves "
            f"no output of a {height}x{width} input (output {h_out}x{w_out}); use a larger "
            "input, a smaller kernel or more padding"
        )
    m = batch * h_out * w_out
    n = out_ch
    k = in_ch // groups * kernel * kernel
    b = dtype_bytes(dtype)
    nbytes = (batch * in_ch * height * width + out_ch * k + m * n) * b
    return Op(
        name,
        OpKind.CONV2D,
        2.0 * m * n * k,
        _mem(nbytes),
        dtype,
        Unit.MATRIX,
        ConvShape(
            m, n, k, 1, h_out=h_out, w_out=w_out, images=batch,
            in_elements=batch * in_ch * height * width, kernel=kernel, stride=stride,
            groups=groups, padding=pad,
        ),
    )


def _check_heads(
    name: str, heads: float, kv_heads: float | None, head_dim: float, v_head_dim: float | None
) -> None:
    """Attention needs at least one head of positive width; GQA shares each K/V head among
    heads/kv_heads query heads, so whole head counts must divide. Per-rank averages of a
    sharded model may be fractional (heads / tp); those are not checked for divisibility."""
    if heads <= 0:
        raise InputError(f"{name}: heads must be >= 1, got {heads}")
    if head_dim <= 0 or (v_head_dim is not None and v_head_dim <= 0):
        raise InputError(f"{name}: head_dim must be >= 1, got {head_dim} (v: {v_head_dim})")
    if kv_heads is None:
        return
    if kv_heads <= 0:
        raise InputError(f"{name}: kv_heads must be >= 1, got {kv_heads}")
    whole = float(heads).is_integer() and float(kv_heads).is_integer()
    if whole and int(heads) % int(kv_heads):
        raise InputError(
            f"{name}: heads ({heads:g}) must be a multiple of kv_heads ({kv_heads:g}): in GQA "
            "each K/V head serves heads/kv_heads query heads; choose kv_heads dividing heads"
        )


def fused_attention(
    name: str,
    batch: float,
    heads: float,
    q_len: float,
    kv_len: float,
    head_dim: float,
    dtype: str = "bf16",
    causal: bool = False,
    kv_heads: float | None = None,
    v_head_dim: float | None = None,
    role: Role = NO_ROLE,
    window: float = 0,
) -> Op:
    """A FlashAttention-style fused kernel: QK^T and PV on the matrix unit, no S x S in memory.

    Causal prefill computes about half of the score matrix (q_len == kv_len). Bytes:
    Q, K, V read once and O written once (K/V shared by ``heads/kv_heads`` query heads).
    ``window`` > 0 (sliding-window layers, gpt-oss): each query scores at most ``window``
    keys (``sim.ir.attention_pairs``), and only the last q_len + window - 1 keys are read.
    """
    if batch < 0 or heads < 0 or q_len < 0 or kv_len < 0:
        _check_positive(name, batch=batch, heads=heads, q_len=q_len, kv_len=kv_len)
    _check_heads(name, heads, kv_heads, head_dim, v_head_dim)
    kvh = kv_heads or heads
    vd = v_head_dim or head_dim
    if causal and kv_len < q_len:
        raise InputError(
            f"{name}: causal attention needs kv_len >= q_len (the queries are the last "
            f"q_len positions), got kv_len={kv_len} < q_len={q_len}; raise --kv-len"
        )
    if window < 0 or (window and not causal):
        raise InputError(f"{name}: a sliding window needs causal attention and window >= 1, "
                         f"got window={window} (causal={causal})")
    # Query i attends to kv positions up to (kv_len - q_len + i) (and back ``window``).
    pairs = attention_pairs(q_len, kv_len, causal, window)
    flops = 2.0 * batch * heads * pairs * (head_dim + vd)
    b = dtype_bytes(dtype)
    kv_read = min(kv_len, q_len + window - 1) if window else kv_len
    nbytes = b * batch * (heads * q_len * (head_dim + vd) + kvh * kv_read * (head_dim + vd))
    return Op(
        name,
        OpKind.ATTENTION,
        flops,
        _mem(nbytes),
        dtype,
        Unit.MATRIX,
        AttentionShape(batch, heads, q_len, kv_len, head_dim, kvh, vd, causal, window=window),
        role,
    )


def embedding_lookup(
    name: str, tokens: float, hidden: float, dtype: str = "bf16", role: Role = NO_ROLE
) -> Op:
    """Gather ``tokens`` rows of an embedding table: read and write one row each, no FLOPs."""
    _check_positive(name, tokens=tokens, hidden=hidden)
    nbytes = 2.0 * tokens * hidden * dtype_bytes(dtype)
    return Op(name, OpKind.EMBEDDING, 0.0, _mem(nbytes), dtype, Unit.DMA,
              EmbeddingShape(tokens, hidden), role)
