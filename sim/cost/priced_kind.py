"""The op kind a device prices an op under: the op's own, except where torch's CPU runs one
kind of op on two ATen paths of different speed, which a calibration fits apart
(convolutions: sim/cost/conv_path.py; nearest upsampling: sim/cost/upsample_path.py)."""

from __future__ import annotations

from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost.conv_path import conv_kind
from xpusim.sim.cost.upsample_path import upsample_kind
from xpusim.sim.ir import Op, OpKind


def priced_kind(op: Op, device: Device, split: bool | None = None) -> str:
    """The kind ``device`` prices ``op`` under (``conv_kind``, ``upsample_kind``; every
    other op, and every op off a CPU, its own kind).

    ``split`` None (pricing): a path's own kind only where the device's calibration prices
    it (its ``kind_speed`` has the kind); an overlay fitted before the rule, or by a fit
    that could not identify the kind, prices the op under its own kind, as it was fitted.
    True (the fit's table): by the rule alone; False: never."""
    kind = op.kind
    if device.arch != "cpu":
        return str(kind)
    if kind == OpKind.CONV2D:
        return conv_kind(op, device, split)
    if kind == OpKind.UPSAMPLE:
        return upsample_kind(op, device, split)
    return str(kind)
