"""``op``: the predicted time of one op on one device, with its breakdown.

An op is a GEMM, a fused (flash) attention call, a pointwise op or a 2-D convolution
(``kind``, the command's KIND). GEMM, pointwise and convolution are priced by the
roofline cost model; attention by its implementation (``impl``, sim/cost/attention_impl.py)
for the pass asked for, its FLOPs and achieved TFLOP/s counted as the FlashAttention
papers count them.

Each kind has its own fields; a field of another kind must be left out (``None``). The
per-kind defaults live in ``KIND_FIELDS`` and nowhere else.

``timing`` (every kind, sim/cost/op_timing.py) says how the time is measured: ``launch``
(default) as a framework launches the op, host launch overhead included; ``kernel`` the
kernel's duration as a profiler reports it, without the host launch overhead.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace
from typing import Any

from xpusim.hwprofiles.spec import Device
from xpusim.sim import ops
from xpusim.sim.api.base import (
    as_json_dict,
    float16_default,
    request_from_kwargs,
    require_native_dtype,
    resolve_device,
)
from xpusim.sim.cost import OpCost, RooflineModel
from xpusim.sim.cost.attention_impl import (
    PASSES,
    attention_cost,
    default_impl,
    priced_hbm_bytes,
    shape_of,
)
from xpusim.sim.cost.flash_kernels import FLASH_LIMITS
from xpusim.sim.cost.gemm_cutlass import CUTLASS_DTYPES, CUTLASS_IMPLS, cutlass_device_error
from xpusim.sim.cost.gemm_impl import DEEPGEMM_DTYPES, GEMM_IMPLS
from xpusim.sim.cost.gemm_torch import TORCH_GROUPED_IMPLS, torch_grouped_error
from xpusim.sim.cost.gemm_xla import XLA_IMPLS, xla_impl_error
from xpusim.sim.cost.op_timing import as_timed, check_timing
from xpusim.sim.errors import InputError
from xpusim.sim.ir import MAIN_MEMORY, AttentionShape, Op, shape_dict
from xpusim.sim.limits import MAX_DIM, check_namespace
from xpusim.sim.units import parse_int_list
from xpusim.sim.validation.track_record import TrackRecord, lookup, op_category, record_dict

KINDS = ("gemm", "attention", "elementwise", "conv2d")
REQUIRED = "required"  # a KIND_FIELDS default: the field must be given
# Each kind's fields and their defaults (None: derived, as OpRequest's comments say).
KIND_FIELDS: dict[str, dict[str, Any]] = {
    "gemm": {"m": None, "n": REQUIRED, "k": REQUIRED, "batch": None, "dtype": "bf16",
             "impl": None, "group_rows": None},
    "attention": {
        "batch": 1, "heads": 32, "kv_heads": None, "seq": REQUIRED, "kv_len": None,
        "head_dim": 128, "causal": False, "impl": None, "pass_": "fwd", "dtype": "bf16",
    },
    "elementwise": {
        "numel": REQUIRED, "flops_per_element": 1.0, "inputs": 1, "outputs": 1, "dtype": "bf16",
    },
    "conv2d": {
        "batch": 1, "in_ch": REQUIRED, "out_ch": REQUIRED, "height": REQUIRED,
        "width": REQUIRED, "kernel": 3, "stride": 1, "dtype": "fp32",
    },
}  # fmt: skip
FLOAT_FIELDS = ("numel", "flops_per_element")  # read as floats, as the flags parse them
# FLOPs of a pass relative to the forward (the FlashAttention papers' count). The op's
# roofline bytes (Q, K, V read and O written once) scale by the same factor: an overcount
# for the backward, whose own tensors (Q, K, V, O, dO read; dQ, dK, dV written: FA2 paper,
# Algorithm 2) are 2x the forward's, kept because the naive baseline of the validation
# rows reads these bytes (sim/validation/baseline.py).
PASS_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


@dataclass(frozen=True)
class OpRequest:
    """``xpusim op KIND``'s argument and flags as data; ``None``: the kind's default
    (``KIND_FIELDS``), or not a field of this kind."""

    kind: str | None = None  # required: gemm | attention | elementwise | conv2d
    # A device name or profile path, or a Device (its calibration, if any, included).
    device: str | Device = "h100-sxm5-80gb"
    calibration: str | None = None  # calibration overlay TOML (with a device name)
    dtype: str | None = None  # default bf16 (conv2d: fp32)
    # How the time is measured (sim/cost/op_timing.py): launch = as a framework launches
    # the op (host launch overhead included); kernel = the kernel as a profiler times it.
    timing: str = "launch"
    # gemm: C[batch, m, n] = A[batch, m, k] @ B[batch, k, n]
    m: int | None = None  # required, unless group_rows gives the groups' rows
    n: int | None = None
    k: int | None = None
    batch: int | None = None  # gemm, attention, conv2d; default 1 (gemm: len(group_rows))
    # gemm: rows of each group of a grouped GEMM with unequal groups ("272,560,..." or a
    # sequence), in place of m; priced by --impl torch-grouped-sm90 only
    group_rows: str | tuple[int, ...] | None = None
    # attention
    heads: int | None = None  # default 32
    kv_heads: int | None = None  # default: heads
    seq: int | None = None  # query length (required)
    kv_len: int | None = None  # default: seq
    head_dim: int | None = None  # default 128
    causal: bool | None = None  # default False
    # attention: default the device's (docs/attention.md); gemm: a library kernel of
    # sim/cost/gemm_impl.py GEMM_IMPLS (default: the generic path, docs/cost_model.md)
    impl: str | None = None
    pass_: str | None = None  # --pass: fwd (default), bwd or fwd_bwd
    # elementwise
    numel: float | None = None  # required
    flops_per_element: float | None = None  # default 1
    inputs: int | None = None  # arrays read, each numel elements; default 1 (0: a fill)
    outputs: int | None = None  # arrays written; default 1 (0: a read-only reduction)
    # conv2d (implicit GEMM)
    in_ch: int | None = None
    out_ch: int | None = None
    height: int | None = None
    width: int | None = None
    kernel: int | None = None  # default 3
    stride: int | None = None  # default 1


@dataclass(frozen=True)
class OpResult:
    """One priced op; ``as_dict()`` is ``xpusim op KIND --json``."""

    kind: str
    device: str  # the device's name
    dtype: str
    time_s: float
    bound: str  # compute | memory | overhead
    flops: float  # of the pass (attention: its FlashAttention-count multiple of the forward)
    achieved_flops: float  # flops / time_s
    peak_flops: float  # the device's peak for the op's unit and dtype
    fraction_of_peak: float
    roofline_time_s: float  # max(flops / peak, op.main_bytes / HBM bandwidth)
    # The op priced (attention: the pass's FLOPs; its bytes the forward's Q, K, V, O once
    # times PASS_FACTOR: the roofline's bytes, not the implementation's traffic)
    op: Op
    cost: OpCost  # compute, memory and overhead terms
    impl: str | None = None  # attention only: the implementation priced
    pass_: str | None = None  # attention only
    paper_flops: float | None = None  # attention only: the papers' FLOP count of the pass
    achieved_tflops: float | None = None  # attention only: paper_flops / time_s / 1e12
    timing: str = "launch"
    launch_excluded_s: float = 0.0  # host launch overhead --timing kernel took out of time_s
    # HBM bytes the priced kernels move (None: op.main_bytes, what the roofline priced).
    # Attention: the implementation's traffic (sim.cost.attention_impl.priced_hbm_bytes):
    # standard attention's includes the score matrix written and read, a fused kernel's not.
    priced_hbm_bytes: float | None = None

    @property
    def hbm_bytes(self) -> float:
        """HBM bytes of the kernels priced (``--json``'s ``bytes.hbm``)."""
        return self.op.main_bytes if self.priced_hbm_bytes is None else self.priced_hbm_bytes

    def track_record(self) -> TrackRecord | None:
        """How far predictions of this op kind on this device have been off (the corpus's
        category for ``op KIND`` rows)."""
        return lookup(op_category(self.kind), self.device)

    def as_dict(self) -> dict[str, Any]:
        nbytes = {**self.op.bytes, MAIN_MEMORY: self.hbm_bytes}
        if self.impl is not None:  # attention: the bytes roofline_time_s reads
            nbytes["roofline"] = self.op.main_bytes
        payload = {
            "op": self.kind,
            "device": self.device,
            "dtype": self.dtype,
            "shape": shape_dict(self.op.shape),
            "flops": self.flops,
            "bytes": nbytes,
            **self.cost.as_dict(),
            "timing": self.timing,
            "launch_excluded_s": self.launch_excluded_s,
            "achieved_flops": self.achieved_flops,
            "peak_flops": self.peak_flops,
            "fraction_of_peak": self.fraction_of_peak,
            "roofline_time_s": self.roofline_time_s,
        }
        if self.impl is not None:
            payload.update(
                {
                    "impl": self.impl,
                    "pass": self.pass_,
                    "paper_flops": self.paper_flops,
                    "achieved_tflops": self.achieved_tflops,
                }
            )
        payload["track_record"] = record_dict(self.track_record())
        return as_json_dict(payload)


def op(request: OpRequest | None = None, /, **kwargs: Any) -> OpResult:
    """Price one op on one device."""
    req = request_from_kwargs(OpRequest, request, kwargs, "xpusim.op")
    values = resolve(req)
    device = resolve_device(req.device, req.calibration)
    if req.dtype is None and values["dtype"] == "bf16":  # the default follows the device
        values["dtype"] = float16_default(device)  # fp16 on a V100, 910A, 310P
    if values["kind"] == "gemm" and (error := xla_impl_error(values["impl"], device, "")):
        raise InputError(error)  # xla-sm90 on a device that is not sm_90
    if values.get("impl") in CUTLASS_IMPLS and (why := cutlass_device_error(device)):
        raise InputError(f"op gemm --impl {values['impl']}: {why}")
    if values.get("impl") in TORCH_GROUPED_IMPLS and (
            why := torch_grouped_error(device, values["dtype"], values["batch"])):
        raise InputError(why)
    if values["kind"] in ("gemm", "attention"):  # after the kernels' own, more precise refusals
        require_native_dtype(device, values["dtype"], f"op {values['kind']} --dtype")
    the_op = build_op(values)
    peak = device.peak_for("matrix" if the_op.unit == "matrix" else "vector", the_op.dtype)
    attention: dict[str, Any] = {}
    if values["kind"] == "attention":
        the_op, launched, attention = _price_attention(device, the_op, values)
        launch_s = launched.overhead_s  # attention prices one launch per kernel it runs
    else:
        launched = RooflineModel(device).time(the_op)
        launch_s = device.efficiency.launch_overhead_s  # one kernel launch
    cost, excluded = as_timed(launched, req.timing, launch_s)
    if attention:
        attention["achieved_tflops"] = attention["paper_flops"] / cost.time_s / 1e12
    achieved = the_op.flops / cost.time_s if cost.time_s else 0.0
    return OpResult(
        kind=str(the_op.kind),
        device=device.name,
        dtype=the_op.dtype,
        time_s=cost.time_s,
        bound=cost.bound,
        flops=the_op.flops,
        achieved_flops=achieved,
        peak_flops=peak,
        fraction_of_peak=achieved / peak if cost.time_s else 0.0,
        roofline_time_s=max(the_op.flops / peak, the_op.main_bytes / device.hbm_bandwidth),
        op=the_op,
        cost=cost,
        **attention,
        timing=req.timing,
        launch_excluded_s=excluded,
    )


def _price_attention(
    device: Device, the_op: Op, values: dict[str, Any]
) -> tuple[Op, OpCost, dict[str, Any]]:
    """The attention call priced by its implementation for the pass (as launched); the op
    with the pass's FLOPs and bytes; the implementation, pass and the papers' FLOP count."""
    impl = values["impl"] or default_impl(device)
    pass_ = values["pass_"]
    shape = shape_of(the_op)
    if values["impl"] and (why := flash_shape_error(impl, shape.dtype, shape.head_dim,
                                                     shape.v_head_dim, pass_)):
        raise InputError(why)  # a kernel named by --impl that cannot run this call
    cost = attention_cost(device, shape, impl, pass_)
    factor = PASS_FACTOR[pass_]
    scaled = replace(
        the_op,
        flops=the_op.flops * factor,
        bytes={k: v * factor for k, v in the_op.bytes.items()},
        # The shape names the implementation priced (it was "" for the device default),
        # so --json's "shape" and "impl" agree.
        shape=replace(the_op.shape, impl=impl) if isinstance(the_op.shape, AttentionShape)
        else the_op.shape,
    )
    extra = {"impl": impl, "pass_": pass_, "paper_flops": shape.paper_flops(pass_),
             "priced_hbm_bytes": priced_hbm_bytes(cost.details)}
    return scaled, cost, extra


def resolve(req: OpRequest) -> dict[str, Any]:
    """``kind`` and the kind's fields, defaults filled in; fields of other kinds refused."""
    check_namespace(argparse.Namespace(**vars(req)))  # the flags' limits hold here too
    if req.kind not in KIND_FIELDS:
        given = "an op kind is required" if req.kind is None else f"KIND {req.kind!r}"
        raise InputError(f"{given}: choose one of {', '.join(KINDS)}")
    check_timing(req.timing)
    own = KIND_FIELDS[req.kind]
    values: dict[str, Any] = {"kind": req.kind}
    for f in fields(OpRequest):
        if f.name in ("kind", "device", "calibration", "timing"):
            continue  # fields of every kind
        value = getattr(req, f.name)
        if f.name not in own:
            if value is not None:
                raise InputError(
                    f"{_flag(f.name)} is not an option of op {req.kind}; its options: "
                    f"{', '.join(_flag(name) for name in own)}"
                )
            continue
        if value is None:
            value = own[f.name]
            if value == REQUIRED:
                raise InputError(f"op {req.kind} needs {_flag(f.name)}")
        values[f.name] = float(value) if f.name in FLOAT_FIELDS else value
    _check_kind(values)
    return values


def _check_kind(values: dict[str, Any]) -> None:
    """The checks of one kind's resolved fields (``resolve``)."""
    kind = values["kind"]
    if kind == "gemm":
        _resolve_gemm_rows(values)
        _check_gemm_impl(values)
    if kind == "attention" and values["pass_"] not in PASSES:
        raise InputError(f"--pass: expected one of {', '.join(PASSES)}, got '{values['pass_']}'")
    if kind == "elementwise" and values["numel"] != int(values["numel"]):
        raise InputError(f"--numel {values['numel']:g}: an op has a whole number of elements")
    if kind == "elementwise" and values["inputs"] + values["outputs"] == 0:
        raise InputError(
            "op elementwise: --inputs 0 with --outputs 0 moves no bytes; give at least one "
            "array: --inputs 0 --outputs 1 is a write-only fill, --inputs 1 --outputs 0 a "
            "read-only (reduction-like) kernel"
        )


def build_op(v: dict[str, Any]) -> Op:
    """The IR op of the resolved fields ``v`` (``resolve``)."""
    kind = v["kind"]
    if kind == "gemm":
        rows = v["group_rows"]
        m = sum(rows) / len(rows) if rows else v["m"]  # unequal groups: m is their mean
        return ops.gemm("gemm", m, v["n"], v["k"], v["dtype"], v["batch"],
                        impl=v["impl"] or "", group_rows=rows)
    if kind == "attention":
        return ops.fused_attention(
            "attention", v["batch"], v["heads"], v["seq"], v["kv_len"] or v["seq"],
            v["head_dim"], v["dtype"], v["causal"], v["kv_heads"],
        )  # fmt: skip
    if kind == "elementwise":
        # Bytes as the kernel moves them: numel x element size per array read or written
        # (a write-only fill reads nothing; a read-only reduction writes no array).
        return ops.elementwise(
            "elementwise", v["numel"], v["dtype"], v["flops_per_element"], v["inputs"],
            v["outputs"],
        )
    return ops.conv2d(
        "conv2d", v["batch"], v["in_ch"], v["out_ch"], v["height"], v["width"],
        v["kernel"], v["stride"], None, v["dtype"],
    )  # fmt: skip


def _resolve_gemm_rows(v: dict[str, Any]) -> None:
    """``--m`` / ``--group-rows`` of op gemm: exactly one; group rows (comma-separated integers
    >= 0, at least one group, a total >= 1) set ``batch`` to their count, and a ``--batch``
    given with them must equal it; they need a kernel that reads them (``--impl
    torch-grouped-sm90``). ``v["group_rows"]`` becomes a tuple (() when not given)."""
    text = v["group_rows"]
    if text is None:
        if v["m"] is None:
            raise InputError("op gemm needs --m (or --group-rows: the rows of each group)")
        v["group_rows"] = ()
        v["batch"] = 1 if v["batch"] is None else v["batch"]
        return
    if v["m"] is not None:
        raise InputError("op gemm: give --m (equal groups of M rows) or --group-rows (the "
                         "rows of each group), not both")
    if not isinstance(text, str | list | tuple):
        raise InputError(f"--group-rows: expected comma-separated integers, got {text!r}")
    rows = tuple(parse_int_list(text, "--group-rows") if isinstance(text, str)
                 else (_row_int(x) for x in text))
    if not rows:
        raise InputError("--group-rows: empty list; give the rows of each group, e.g. 112,1328")
    if min(rows) < 0 or sum(rows) < 1 or sum(rows) > MAX_DIM:
        raise InputError(f"--group-rows: each group has >= 0 rows and the groups together "
                         f"1..{MAX_DIM:,}; got {','.join(map(str, rows))}")
    if v["batch"] is not None and v["batch"] != len(rows):
        raise InputError(f"op gemm: --batch {v['batch']} but --group-rows lists {len(rows)} "
                         "groups; leave --batch out (it is the number of groups)")
    if v["impl"] not in TORCH_GROUPED_IMPLS:
        raise InputError("--group-rows needs a kernel that cuts unequal groups: give --impl "
                         f"{' or '.join(TORCH_GROUPED_IMPLS)} (the generic path prices equal "
                         "groups: --m M --batch G)")
    v["group_rows"], v["batch"] = rows, len(rows)


def _row_int(x: Any) -> int:
    """One group's rows from a sequence (the API's ``group_rows``): an integer."""
    if isinstance(x, bool) or not isinstance(x, int):
        raise InputError(f"--group-rows: expected integers, got {x!r}")
    return x


def _check_gemm_impl(v: dict[str, Any]) -> None:
    """``--impl`` of op gemm: one of ``GEMM_IMPLS``; DeepGEMM's kernels take FP8 inputs, and
    its dense kernel one matrix (groups name their layout: -contiguous or -masked); vLLM's
    CUTLASS NVFP4 kernel (``cutlass_scaled_fp4_mm``) takes NVFP4 inputs and one matrix; XLA's
    ``xla-sm90`` dot takes BF16 (``gemm_xla.xla_impl_error``); PyTorch's grouped kernel BF16
    or FP8 and at most 1023 groups (``gemm_torch.torch_grouped_error``). The device: ``op``."""
    impl = v["impl"]
    if impl is None:
        return
    if impl not in GEMM_IMPLS:
        raise InputError(f"op gemm --impl {impl!r}: choose one of {', '.join(GEMM_IMPLS)}")
    if impl in XLA_IMPLS:
        error = xla_impl_error(impl, None, v["dtype"])
    elif impl in TORCH_GROUPED_IMPLS:
        error = torch_grouped_error(None, v["dtype"], v["batch"])
    elif impl in CUTLASS_IMPLS:
        error = _cutlass_impl_error(impl, v)
    else:
        error = _deepgemm_impl_error(impl, v)
    if error:
        raise InputError(error)


def _deepgemm_impl_error(impl: str, v: dict[str, Any]) -> str | None:
    """Why DeepGEMM's kernel ``impl`` cannot run ``v`` (None: it can)."""
    if v["dtype"] not in DEEPGEMM_DTYPES:
        return (f"op gemm --impl {impl}: DeepGEMM runs FP8 GEMMs; "
                f"give --dtype {' or '.join(DEEPGEMM_DTYPES)}")
    if impl == "deepgemm" and v["batch"] != 1:
        return ("op gemm --impl deepgemm is one dense GEMM; for groups give "
                "--impl deepgemm-contiguous or deepgemm-masked")
    return None


def _cutlass_impl_error(impl: str, v: dict[str, Any]) -> str | None:
    """Why vLLM's CUTLASS NVFP4 kernel cannot run ``v`` (None: it can)."""
    if v["dtype"] not in CUTLASS_DTYPES:
        return (f"op gemm --impl {impl}: vLLM's cutlass_scaled_fp4_mm takes "
                f"NVFP4 operands; give --dtype {' or '.join(CUTLASS_DTYPES)}")
    if v["batch"] != 1:
        return (f"op gemm --impl {impl}: cutlass_scaled_fp4_mm is one 2-D GEMM "
                "(a and b must be matrices); give --batch 1")
    return None


def _flag(name: str) -> str:
    return "--" + name.rstrip("_").replace("_", "-")


# FlashAttention-3 (Dao-AILab/flash-attention hopper/flash_api.cpp @ 000090d0): mha_fwd takes
# fp16, bf16 and fp8_e4m3 ("FlashAttention only supports fp16, bf16, and fp8_e4m3 data type"),
# mha_bwd fp16 and bf16 only; both "head dimension at most" get_max_headdim() = 256.
FA3_DTYPES = {"fwd": ("fp16", "bf16", "fp8", "fp8_e4m3"), "bwd": ("fp16", "bf16")}
FA3_MAX_HEAD_DIM = 256


def flash_shape_error(impl: str, dtype: str, head_dim: float, v_head_dim: float | None,
                      pass_: str = "fwd") -> str | None:
    """Why FlashAttention 1/2 (``FLASH_LIMITS``, from their README) or 3 (``FA3_DTYPES``)
    cannot run this call (its dtype, pass or head size), else None. Only for a call the user
    names (``op attention --impl``): the training and serving stacks use ``flash2`` as their
    fused kernel's stand-in at any dtype."""
    if impl == "flash3":
        return _fa3_error(dtype, int(max(head_dim, v_head_dim or head_dim)), pass_)
    if impl not in FLASH_LIMITS:
        return None
    _cc, dtypes, max_dim = FLASH_LIMITS[impl]
    if dtype not in dtypes:
        return (f"--impl {impl} --dtype {dtype}: FlashAttention-{impl[-1]} runs "
                f"{' and '.join(dtypes)} only (flash-attn README); use --impl cudnn (or flash3 on "
                "Hopper) for fp8, or --dtype bf16")
    largest = int(max(head_dim, v_head_dim or head_dim))
    if largest > max_dim:
        return (f"--impl {impl} --head-dim {largest}: FlashAttention-{impl[-1]} supports head "
                f"dimensions up to {max_dim} (flash-attn README); use a smaller --head-dim or "
                "--impl cudnn / standard")
    return None


def _fa3_error(dtype: str, largest: int, pass_: str) -> str | None:
    """``flash_shape_error`` for FlashAttention-3 (``FA3_DTYPES``, ``FA3_MAX_HEAD_DIM``)."""
    needs = "bwd" if pass_ in ("bwd", "fwd_bwd") else "fwd"
    if dtype not in FA3_DTYPES[needs]:
        which = "forward" if needs == "fwd" else "backward"
        return (f"--impl flash3 --dtype {dtype} --pass {pass_}: FlashAttention-3's {which} runs "
                f"{', '.join(FA3_DTYPES[needs])} only (hopper/flash_api.cpp); use --impl cudnn "
                "or standard, or another --dtype")
    if largest > FA3_MAX_HEAD_DIM:
        return (f"--impl flash3 --head-dim {largest}: FlashAttention-3 supports head dimensions "
                f"up to {FA3_MAX_HEAD_DIM} (hopper/flash_api.cpp); use a smaller --head-dim or "
                "--impl cudnn / standard")
    return None
