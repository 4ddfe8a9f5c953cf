"""``collective``: the time and bandwidth of one collective on a system, or a size sweep.

Bandwidths follow nccl-tests: algbw = bytes / time, busbw = algbw x the kind's bus
factor (2(n-1)/n for all-reduce, (n-1)/n for all-gather / reduce-scatter / all-to-all,
1 otherwise), so busbw compares directly with link peaks.

``collective()`` prices one buffer size; ``collective_sweep()`` prices sizes doubling from
``MIN`` to ``MAX`` (``xpusim collective KIND --sweep MIN:MAX``) and returns the rows with
the validation corpus's measured points for the same kind, system, ranks and nodes. The
sweep is a separate function so each returns one typed result.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

from xpusim.hwprofiles import load_system
from xpusim.hwprofiles.spec import System
from xpusim.sim.api.base import as_json_dict, request_from_kwargs
from xpusim.sim.errors import InputError
from xpusim.sim.ir import CollectiveKind
from xpusim.sim.limits import check_namespace
from xpusim.sim.network import cost_collective
from xpusim.sim.network.algorithms import ALGORITHMS
from xpusim.sim.network.api import BACKENDS, MAX_RANKS, bus_factor
from xpusim.sim.network.api import CollectiveResult as NetworkCollectiveResult
from xpusim.sim.network.call_timing import TIMINGS, timing_overhead_s
from xpusim.sim.network.copy import APIS
from xpusim.sim.network.protocols import PROTOCOLS
from xpusim.sim.units import parse_size
from xpusim.sim.validation.track_record import TrackRecord, lookup, record_dict, system_device

KINDS = tuple(k.value for k in CollectiveKind)
ALGORITHM_CHOICES = ("auto", *ALGORITHMS)
PROTOCOL_CHOICES = ("auto", *PROTOCOLS)
DEFAULT_SWEEP = "1KiB:4GiB"  # the sizes of a bare --sweep


@dataclass(frozen=True)
class CollectiveRequest:
    """``xpusim collective KIND``'s argument and flags as data."""

    kind: str | None = None  # required: all-reduce, all-gather, ... (the command's KIND)
    # A profile name or path, or a System (sized for the group like a loaded profile).
    system: str | System = "dgx-h100"
    ranks: int | None = None  # default: nodes x devices per node (one node's devices)
    nodes: int | None = None  # default: as many as the ranks need
    bytes: str | float = "1GiB"  # per-rank buffer (sim.ir.Collective.bytes); "1GiB" or a number
    algorithm: str = "auto"  # auto = the fastest, as the library picks
    protocol: str = "auto"  # NCCL protocol LL, LL128, Simple; auto = the cheapest
    backend: str = "analytical"  # analytical | flow
    # library = as the system's collective library runs it (NCCL/HCCL send/recv);
    # memcpy = send-recv as a direct copy-engine copy (cudaMemcpy peer, aclrtMemcpy)
    api: str = "library"
    sweep: str | None = None  # MIN:MAX for collective_sweep() (None there: 1KiB:4GiB)
    # How the time is measured (sim/network/call_timing.py): device = calls back to back
    # (nccl-tests); host = one torch.distributed call on an idle device, so the
    # framework's per-call host path is inside the timed interval.
    timing: str = "device"


@dataclass(frozen=True)
class CollectiveResult:
    """One priced collective; ``as_dict()`` is ``xpusim collective KIND --json``."""

    kind: str
    system: str  # the profile's name
    ranks: int
    nodes: int
    bytes: float  # per-rank buffer
    time_s: float
    algbw_bytes_per_s: float
    busbw_bytes_per_s: float
    algorithm: str  # the one priced (auto: the fastest)
    protocol: str
    note: str  # how the node count was derived ("" when given or one node)
    network: NetworkCollectiveResult  # phases, bytes per link class, bottleneck
    timing: str = "device"
    host_call_s: float = 0.0  # added by --timing host (inside time_s)

    def track_record(self) -> TrackRecord | None:
        """How far collective predictions on this system's device have been off."""
        return lookup("collective", system_device(self.system))

    def as_dict(self) -> dict[str, Any]:
        header = _header(self.kind, self.system, self.ranks, self.nodes, self.note)
        timing = {"timing": self.timing, "host_call_s": self.host_call_s}
        return as_json_dict({**header, "bytes": self.bytes, **self.network.as_dict(), **timing,
                             "track_record": record_dict(self.track_record())})


@dataclass(frozen=True)
class CollectiveSweepPoint:
    """One size of a sweep."""

    bytes: float
    time_s: float
    algbw_bytes_per_s: float
    busbw_bytes_per_s: float
    algorithm: str
    protocol: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "time_s": self.time_s,
            "algbw": self.algbw_bytes_per_s,
            "algorithm_bandwidth": self.algbw_bytes_per_s,  # the older name, kept
            "bus_bandwidth": self.busbw_bytes_per_s,
            "algorithm": self.algorithm,
            "protocol": self.protocol,
        }


@dataclass(frozen=True)
class CollectiveSweepResult:
    """A size sweep; ``as_dict()`` is ``xpusim collective KIND --sweep MIN:MAX --json``
    with ``plot`` None (the command fills in the picture it wrote)."""

    kind: str
    system: str
    ranks: int
    nodes: int
    backend: str
    note: str
    points: tuple[CollectiveSweepPoint, ...]
    # Published busbw points of the validation corpus for this kind, system, ranks and
    # nodes (id, bytes, bus_bandwidth in B/s), by size; empty when it has none.
    measured: tuple[dict[str, Any], ...]

    def rows(self) -> list[dict[str, Any]]:
        """The sweep's rows as the JSON and CSV write them."""
        return [p.as_dict() for p in self.points]

    def as_dict(self) -> dict[str, Any]:
        header = _header(self.kind, self.system, self.ranks, self.nodes, self.note)
        return as_json_dict(
            {
                **header,
                "backend": self.backend,
                "plot": None,
                "measured": list(self.measured),
                "sweep": self.rows(),
            }
        )


def collective(request: CollectiveRequest | None = None, /, **kwargs: Any) -> CollectiveResult:
    """Price one collective of ``bytes`` per rank over ``ranks`` devices of ``system``."""
    req = request_from_kwargs(CollectiveRequest, request, kwargs, "xpusim.collective")
    if req.sweep is not None:
        raise InputError(
            f"sweep={req.sweep!r}: xpusim.collective prices one size; call "
            "xpusim.collective_sweep for a size sweep"
        )
    kind, system, ranks, note = _prepare(req)
    nbytes = _bytes(req.bytes)
    res = cost_collective(
        system, kind, tuple(range(ranks)), nbytes, req.algorithm, req.backend, req.protocol,
        req.api,
    )
    host_s = timing_overhead_s(req.timing)
    res = _timed(res, kind, ranks, nbytes, host_s)
    return CollectiveResult(
        kind=kind,
        system=system.name,
        ranks=ranks,
        nodes=system.nodes,
        bytes=nbytes,
        time_s=res.time_s,
        algbw_bytes_per_s=res.algorithm_bandwidth,
        busbw_bytes_per_s=res.bus_bandwidth,
        algorithm=res.algorithm,
        protocol=res.protocol,
        note=note,
        network=res,
        timing=req.timing,
        host_call_s=host_s,
    )


def _timed(
    res: NetworkCollectiveResult, kind: str, ranks: int, nbytes: float, host_s: float
) -> NetworkCollectiveResult:
    """The result as a benchmark that adds ``host_s`` to each call reports it."""
    if host_s == 0.0 or res.time_s == 0.0:
        return res
    time_s = res.time_s + host_s
    algbw = nbytes / time_s
    return replace(res, time_s=time_s, algorithm_bandwidth=algbw,
                   bus_bandwidth=algbw * bus_factor(CollectiveKind(kind), ranks))


def collective_sweep(
    request: CollectiveRequest | None = None, /, **kwargs: Any
) -> CollectiveSweepResult:
    """Price the collective at sizes doubling from the sweep's MIN to its MAX."""
    req = request_from_kwargs(CollectiveRequest, request, kwargs, "xpusim.collective_sweep")
    kind, system, ranks, note = _prepare(req)
    group = tuple(range(ranks))
    host_s = timing_overhead_s(req.timing)
    points = []
    for size in sweep_sizes(req.sweep or DEFAULT_SWEEP):
        res = cost_collective(
            system, kind, group, size, req.algorithm, req.backend, req.protocol, req.api
        )
        res = _timed(res, kind, ranks, size, host_s)
        points.append(
            CollectiveSweepPoint(
                bytes=size,
                time_s=res.time_s,
                algbw_bytes_per_s=res.algorithm_bandwidth,
                busbw_bytes_per_s=res.bus_bandwidth,
                algorithm=res.algorithm,
                protocol=res.protocol,
            )
        )
    given = req.system if isinstance(req.system, str) else req.system.name
    return CollectiveSweepResult(
        kind=kind,
        system=system.name,
        ranks=ranks,
        nodes=system.nodes,
        backend=req.backend,
        note=note,
        points=tuple(points),
        measured=tuple(measured_points(kind, given, system.name, ranks, system.nodes)),
    )


def _prepare(req: CollectiveRequest) -> tuple[str, System, int, str]:
    """The checked kind and choices; the system sized for the group, its ranks and note."""
    check_namespace(argparse.Namespace(**vars(req)))  # the flags' limits hold here too
    if req.kind is None:
        raise InputError(f"a collective kind is required: one of {', '.join(KINDS)}")
    for flag, value, choices in (
        ("KIND", req.kind, KINDS),
        ("--algorithm", req.algorithm, ALGORITHM_CHOICES),
        ("--protocol", req.protocol, PROTOCOL_CHOICES),
        ("--backend", req.backend, BACKENDS),
        ("--api", req.api, APIS),
        ("--timing", req.timing, TIMINGS),
    ):
        if value not in choices:
            raise InputError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    system, ranks, note = sized_system(req.system, req.ranks, req.nodes)
    return req.kind, system, ranks, note


def _bytes(value: str | float) -> float:
    return parse_size(value if isinstance(value, str) else repr(value), "--bytes")


def sized_system(
    name: str | System, ranks: int | None, nodes: int | None
) -> tuple[System, int, str]:
    """Load the system and size it for ``ranks``; returns (system, ranks, note)."""
    system = name if isinstance(name, System) else load_system(name)
    dpn = system.devices_per_node
    given_ranks = ranks
    ranks = ranks if ranks is not None else dpn * (nodes or 1)
    if ranks < 1:
        raise InputError(f"--ranks must be >= 1, got {ranks}")
    if ranks > MAX_RANKS:
        flag = "--ranks" if given_ranks is not None else "--nodes"
        given = f"--ranks {ranks}" if given_ranks is not None else f"--nodes {nodes} x {dpn}"
        raise InputError(
            f"{given}: {ranks:,} ranks is above the limit of {MAX_RANKS:,} (2^17, more "
            "than the largest clusters built; the ring/tree pricing grows with every rank): "
            f"pass fewer {flag}"
        )
    need = -(-ranks // dpn)
    note = ""
    if nodes is None:
        nodes = need
        if need > 1:
            note = (
                f"{ranks} ranks need {need} nodes of {dpn} devices "
                f"(ceil({ranks}/{dpn})); using --nodes {need}"
            )
    elif nodes < need:
        raise InputError(
            f"--ranks {ranks} needs {need} nodes of {dpn} devices; got --nodes "
            f"{nodes}: pass --nodes {need} or fewer ranks"
        )
    if nodes < 1:
        raise InputError(f"--nodes must be >= 1, got {nodes}")
    return replace(system, nodes=nodes), ranks, note


def sweep_sizes(spec: str) -> list[float]:
    """Sizes doubling from MIN to MAX of ``spec`` ("1KiB:4GiB")."""
    lo_text, sep, hi_text = spec.partition(":")
    if not sep:
        raise InputError(f"--sweep {spec}: expected MIN:MAX, e.g. 8B:8GiB")
    lo, hi = parse_size(lo_text, "--sweep MIN"), parse_size(hi_text, "--sweep MAX")
    if lo <= 0 or hi < lo:
        raise InputError(f"--sweep {spec}: need 0 < MIN <= MAX")
    sizes = []
    size = lo
    while size <= hi * (1 + 1e-9):
        sizes.append(size)
        size *= 2
    return sizes


def measured_points(
    kind: str, system_arg: str, system_name: str, ranks: int, nodes: int
) -> list[dict[str, Any]]:
    """Published busbw points of the validation corpus for this kind, system, ranks and
    nodes (category "collective", metric busbw, check and fit rows alike): the measured
    curve the sweep plot overlays. Empty when the corpus has none (or is absent)."""
    try:
        from xpusim.sim.validation.corpus import load_corpus
    except ImportError:
        return []
    try:
        rows = load_corpus()
    except (InputError, OSError):
        return []
    out = []
    for row in rows:
        a = row.args
        if row.category != "collective" or row.metric != "busbw" or row.unsupported:
            continue
        if a.get("kind") != kind or a.get("system") not in (system_arg, system_name):
            continue
        if int(a.get("ranks", 0)) != ranks or int(a.get("nodes", 1)) != nodes:
            continue
        if a.get("algorithm", "auto") != "auto" or "bytes" not in a:
            continue  # the sweep shows the library's own choice
        try:
            size = parse_size(str(a["bytes"]), "bytes")
        except InputError:
            continue
        out.append({"id": row.id, "bytes": size, "bus_bandwidth": row.measured * 1e9})
    return sorted(out, key=lambda r: r["bytes"])


def _header(kind: str, system: str, ranks: int, nodes: int, note: str) -> dict[str, Any]:
    header: dict[str, Any] = {"kind": kind, "system": system, "ranks": ranks, "nodes": nodes}
    if note:
        header["note"] = note
    return header
