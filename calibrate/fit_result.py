"""What one calibration fit found: the fitted and starting parameters, how well the fit
cases are matched, which kinds were fitted, which parameters sit at a bound or were held
(``calibrate/fit.py`` makes it; ``calibrate/overlay.py`` writes it out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # fit.py imports this module; the type is only named here
    from xpusim.calibrate.fit import FitParams


@dataclass(frozen=True)
class FitResult:
    params: FitParams
    start: FitParams
    cost: float
    rms_log_error: float
    median_abs_error: float  # fraction, over the fit cases
    p90_abs_error: float
    n_cases: int
    fitted_kinds: tuple[str, ...]
    at_bound: tuple[str, ...]
    success: bool
    message: str
    held: tuple[str, ...] = ()  # parameters kept at the start's value (not fitted)
    # Largest |this fit's vectorised case time / RooflineModel's - 1| over the fit cases at
    # the fitted parameters (pipeline.model_gap): 0 where the table restates the model
    # whole, > 0 where it does not (a fitted max above 1 on a dtype priced at a fallback
    # peak).
    model_gap: float = 0.0

    def summary(self) -> dict:
        return {
            "params": self.params.as_dict(),
            "start": self.start.as_dict(),
            "cost": self.cost,
            "rms_log_error": self.rms_log_error,
            "median_abs_error": self.median_abs_error,
            "p90_abs_error": self.p90_abs_error,
            "n_cases": self.n_cases,
            "fitted_kinds": list(self.fitted_kinds),
            "at_bound": list(self.at_bound),
            "held": list(self.held),
            "success": self.success,
            "message": self.message,
            "model_gap": self.model_gap,
        }
