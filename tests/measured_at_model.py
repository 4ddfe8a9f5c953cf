"""Calibration measurements made up at the times a device's own model predicts: for tests of
which kinds a fit identifies (tests/test_conv_path.py, tests/test_upsample_path.py), not of
the values it fits."""

from __future__ import annotations

from typing import Any

from xpusim.hwprofiles.spec import Device
from xpusim.sim.cost import RooflineModel


def measured_at_model(device: Device, suite: str, shapes: Any, split: str = "fit") -> list[Any]:
    """One ``Measured`` per shape of ``suite``, timed at ``device``'s predicted time."""
    from xpusim.calibrate.harness import Measurement
    from xpusim.calibrate.pipeline import Measured
    from xpusim.calibrate.suites import Case

    model = RooflineModel(device)
    out = []
    for shape in shapes:
        case = Case(suite, tuple((k, float(v)) for k, v in shape.items()), split, "fp32")
        t = sum(model.time(op).time_s for op in case.graph().ops())
        out.append(Measured(case, Measurement(t, t, t, t, 10, 0.0, 0.0, False)))
    return out
