"""The public Python API: one function per ``xpusim`` command.

Each function takes a request (a frozen dataclass whose fields are the command's flags,
with the command's defaults) or the same fields as keyword arguments, and returns a typed
result whose ``as_dict()`` is exactly what the command prints with ``--json``. A negative
verdict (the plan does not fit in memory) raises ``NegativeVerdict`` with the same
document in ``.payload``; bad input raises ``InputError``. See docs/api.md.

    >>> import xpusim
    >>> r = xpusim.train(model="llama-2-7b", system="dgx-h100", tp=8, mbs=1, gbs=8, seq=4096)
    >>> r.tokens_per_s, r.as_dict()["mfu"]
"""

from xpusim.sim.api.attention import AttentionRequest, AttentionResult, attention
from xpusim.sim.api.collective import (
    CollectiveRequest,
    CollectiveResult,
    CollectiveSweepResult,
    collective,
    collective_sweep,
)
from xpusim.sim.api.ep import EpRequest, EpResult, EpSweepResult, ep, ep_sweep
from xpusim.sim.api.explore import ExploreRequest, ExploreResult, explore
from xpusim.sim.api.infer import InferRequest, InferResult, infer
from xpusim.sim.api.op import OpRequest, OpResult, op
from xpusim.sim.api.sd import SdRequest, SdResult, sd
from xpusim.sim.api.serve import DisaggServeResult, ServeRequest, ServeResult, serve
from xpusim.sim.api.train import TrainRequest, TrainResult, train
from xpusim.sim.api.validate import ValidateRequest, ValidateResult, validate
from xpusim.sim.api.whatif import WhatIfRequest, WhatIfResult, whatif
from xpusim.sim.errors import InputError, NegativeVerdict, ProfileError

__all__ = [
    "AttentionRequest",
    "AttentionResult",
    "attention",
    "CollectiveRequest",
    "CollectiveResult",
    "CollectiveSweepResult",
    "collective",
    "collective_sweep",
    "EpRequest",
    "EpResult",
    "EpSweepResult",
    "ep",
    "ep_sweep",
    "InputError",
    "NegativeVerdict",
    "ProfileError",
    "OpRequest",
    "OpResult",
    "op",
    "ExploreRequest",
    "ExploreResult",
    "explore",
    "InferRequest",
    "InferResult",
    "infer",
    "ServeRequest",
    "ServeResult",
    "DisaggServeResult",
    "serve",
    "SdRequest",
    "SdResult",
    "sd",
    "TrainRequest",
    "TrainResult",
    "train",
    "ValidateRequest",
    "ValidateResult",
    "validate",
    "WhatIfRequest",
    "WhatIfResult",
    "whatif",
]
