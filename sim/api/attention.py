"""``attention``: blockwise (FastAttention) versus standard attention by sequence length.

Per sequence length: the predicted time of both kernels, the speedup, the memory each
needs, what bounds each, and whether standard attention's S x S tensors fit in device
memory (docs/attention.md explains the model). With ``tp > 1`` it also simulates
tiling-AllReduce: TP attention + W_o with the all-reduce split into ``blocks`` sequence
blocks on ``system``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import Device, System
from xpusim.sim.api.base import (
    as_json_dict,
    request_from_kwargs,
    require_float16,
    resolve_device,
)
from xpusim.sim.attention_model import compare, tiling_allreduce_cost
from xpusim.sim.errors import InputError
from xpusim.sim.limits import MAX_SEQ, check_int, check_namespace
from xpusim.sim.units import parse_int_list, split_list
from xpusim.sim.validation.track_record import TrackRecord, lookup, record_dict

KERNEL_DTYPES = ("fp16", "bf16", "fp32")  # what kernels/attention.py runs
MAX_SEQ_POINTS = 1000  # rows of one study


@dataclass(frozen=True)
class AttentionRequest:
    """``xpusim attention``'s flags as data (``None``: derived by the model, as noted)."""

    # A device name or profile path, or a Device (its calibration, if any, included).
    device: str | Device = "ascend-910b2"
    calibration: str | None = None  # calibration overlay TOML (with a device name)
    # Sequence lengths: "1024,4096", a geometric range "FIRST,SECOND,...,LAST", or a tuple.
    seq: str | tuple[int, ...] = "1024,2048,...,65536"
    batch: int = 1
    heads: int = 32
    head_dim: int = 128
    causal: bool = False
    dtype: str = "fp16"  # fp16, bf16 or fp32
    outer_block: int | None = None  # keys per Cube->Vector hand-off; default: largest that fits L1/UB
    sync_us: float | None = None  # Cube<->Vector sync per outer block (us); default: estimated
    tp: int = 1  # > 1: also simulate tiling-AllReduce over this many devices
    system: str | System = "atlas-800t-a2"  # the system of the tp study
    blocks: str | tuple[int, ...] = "1,2,4,8,16"  # sequence blocks of the tp study


@dataclass(frozen=True)
class AttentionResult:
    """The study; ``as_dict()`` is ``xpusim attention --json`` (``files`` empty: the
    command lists the CSV and plot it wrote there)."""

    device: str  # the device's name
    batch: int
    heads: int
    head_dim: int
    causal: bool
    dtype: str
    seq: tuple[int, ...]
    speedup: tuple[float, ...]  # standard / fast time, per sequence length
    fast_time_s: tuple[float, ...]
    standard_time_s: tuple[float, ...]
    standard_fits: tuple[bool, ...]  # standard attention's S x S tensors fit device memory
    rows: tuple[dict[str, Any], ...]  # per sequence length: both kernels' time, memory, bound
    tp: int
    system: str | None  # the tp study's system (None with tp = 1)
    tiling_allreduce: tuple[dict[str, Any], ...]  # per (seq, blocks); empty with tp = 1

    def track_record(self) -> TrackRecord | None:
        """How far attention predictions on this device have been off (track_record.py)."""
        return lookup("attention", self.device)

    def as_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "device": self.device,
            "batch": self.batch,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "causal": self.causal,
            "dtype": self.dtype,
            "rows": list(self.rows),
        }
        if self.system is not None:
            payload["system"] = self.system
            payload["tiling_allreduce"] = list(self.tiling_allreduce)
        return as_json_dict({**payload, "files": [],
                             "track_record": record_dict(self.track_record())})


def attention(request: AttentionRequest | None = None, /, **kwargs: Any) -> AttentionResult:
    """Blockwise vs standard attention at each sequence length (and tiling-AllReduce)."""
    req = request_from_kwargs(AttentionRequest, request, kwargs, "xpusim.attention")
    _check(req)
    device = resolve_device(req.device, req.calibration)
    require_float16(device, req.dtype, "--dtype")  # bf16 on a V100 / 910A: no such kernel
    if req.tp < 1:
        raise InputError("--tp must be >= 1")
    sync_s = None if req.sync_us is None else req.sync_us * 1e-6
    seqs = parse_seq_list(req.seq)
    rows = tuple(
        compare(
            device, req.batch, req.heads, s, req.head_dim, req.causal, req.dtype,
            req.outer_block, sync_s,
        )  # fmt: skip
        for s in seqs
    )
    system: str | None = None
    tiling: tuple[dict[str, Any], ...] = ()
    if req.tp > 1:
        sys_obj = req.system if isinstance(req.system, System) else load_system(req.system)
        system = sys_obj.name
        if sys_obj.device.name != device.name:  # tiling_allreduce_cost prices sys_obj's device
            raise InputError(
                f"--tp prices tiling-AllReduce on --system {system}, whose devices are "
                f"{sys_obj.device.name}, not --device {device.name}: pass a --system of "
                f"{device.name} devices, or --device {sys_obj.device.name}"
            )
        blocks = _int_list(req.blocks, "--blocks")
        tiling = tuple(
            tiling_allreduce_cost(
                sys_obj, req.batch, req.heads, s, req.head_dim, req.tp, n, req.causal, req.dtype
            )
            for s in seqs
            for n in blocks
        )
    return AttentionResult(
        device=device.name,
        batch=req.batch,
        heads=req.heads,
        head_dim=req.head_dim,
        causal=req.causal,
        dtype=req.dtype,
        seq=tuple(seqs),
        speedup=tuple(r["speedup"] for r in rows),
        fast_time_s=tuple(r["fast_time_s"] for r in rows),
        standard_time_s=tuple(r["standard_time_s"] for r in rows),
        standard_fits=tuple(r["standard_fits"] for r in rows),
        rows=rows,
        tp=req.tp,
        system=system,
        tiling_allreduce=tiling,
    )


def _check(req: AttentionRequest) -> None:
    check_namespace(argparse.Namespace(**vars(req)))  # the flags' limits hold here too
    for name in ("batch", "heads", "head_dim"):
        if getattr(req, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    if req.dtype not in KERNEL_DTYPES:
        raise InputError(
            f"--dtype {req.dtype}: the attention kernels run {', '.join(KERNEL_DTYPES)}"
        )
    if req.sync_us is not None and req.sync_us < 0:
        raise InputError("--sync-us must be >= 0")


def _int_list(value: str | tuple[int, ...], flag: str) -> list[int]:
    if isinstance(value, str):
        return parse_int_list(value, flag)
    return [int(v) for v in value]


def parse_seq_list(text: str | tuple[int, ...]) -> list[int]:
    """'1024,2048,4096' or a geometric range '1024,2048,...,65536' (ratio of the first two)."""
    if not isinstance(text, str):
        text = ",".join(str(v) for v in text)
    parts = split_list(text, "--seq")
    if "..." not in parts:
        values = parse_int_list(text, "--seq")
    else:
        values = _seq_range(parts)
    if min(values) < 1:
        raise InputError(f"--seq: every length must be >= 1, got {min(values)}")
    for v in values:  # sim.limits: a length above 2^24 tokens would run for minutes
        check_int(v, "--seq", 1, MAX_SEQ)
    if len(values) > MAX_SEQ_POINTS:
        raise InputError(f"--seq: {len(values)} lengths, more than {MAX_SEQ_POINTS}; pass fewer")
    return values


def _seq_range(parts: list[str]) -> list[int]:
    if len(parts) != 4 or parts[2] != "...":
        raise InputError(
            "--seq: a range is written FIRST,SECOND,...,LAST, e.g. 1024,2048,...,65536"
        )
    first, second, last = (parse_int_list(p, "--seq")[0] for p in (parts[0], parts[1], parts[3]))
    if not 0 < first < second <= last or second % first:
        raise InputError(
            "--seq: range needs 0 < FIRST < SECOND <= LAST with SECOND a multiple "
            "of FIRST, e.g. 1024,2048,...,65536"
        )
    ratio = second // first
    values = [first]
    while values[-1] * ratio <= last:
        values.append(values[-1] * ratio)
    if values[-1] != last:  # '1024,2048,...,3000' stopped at 2048 without a word
        raise InputError(
            f"--seq: {last} is not in the range {first},{second},... (x{ratio} each step; "
            f"it reaches {values[-1]} then {values[-1] * ratio}); end it at one of them"
        )
    return values
