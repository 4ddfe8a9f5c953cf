"""Disaggregated serving: prefill on one pool of devices, decode on another.

Splitwise (Patel et al., ISCA 2024, arXiv:2311.18677) and DistServe (Zhong et al., OSDI
2024, arXiv:2401.09670) run a request's prompt on a prefill instance, move its KV cache
to a decode instance, and generate there; each pool can then be sized, parallelised
and even built from different parts (Ascend 950PR for prefill, 950DT for decode).

The model reuses ``xpusim.sim.inference.serving.Server`` for both pools:

1. **Prefill pool**: the requests with one output token each (the first token is the
   prefill's). Their first-token times are the TTFT of the split deployment.
2. **KV transfer**: each request's KV cache, ``prompt x kv_bytes_per_token`` of the whole
   model (every layer, all TP shards: the layer's K/V of one token exist once per
   KV head; MLA's latent once), crosses the network from the prefill instance to the
   decode instance. Transfers share one path in FIFO order: ``bytes / bandwidth +
   latency`` each, starting when both the prefill is done and the path is free.
   The path is the scale-up fabric when both pools sit in one system (a supernode or one
   NVLink domain), else the NICs: ``devices x per-device NIC share`` on the slower side.
   Layer-by-layer overlap of the transfer with the prefill (DistServe s4) is not
   modelled: the transfer starts after the last layer (conservative).
3. **Decode pool**: each request arrives when its KV cache has landed and enters the
   batch without a prefill (``DecodeOnlyCosts``: the admission costs only the engine's
   per-request host time; chunked-prefill engines still spend token budget on the
   prompt, which is free). Its first output token is the one the prefill produced.

TPOT of the split = (decode-pool finish - first token) / (output - 1): it includes the
KV transfer and the decode-queue wait, as a user streaming the reply sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xpusim.hwprofiles.spec import System
from xpusim.sim.errors import InputError
from xpusim.sim.inference.serving import Server, ServeResult
from xpusim.sim.inference.stepcosts import StepCosts
from xpusim.sim.inference.workload import Request


class DecodeOnlyCosts(StepCosts):
    """Step costs of a decode instance: the prompt's KV arrives over the network, so
    admitting a request costs no prefill compute."""

    def prefill(self, sequences: int, prompt: float) -> float:
        return 0.0

    def prefill_token_device(self, chunk: float) -> float:
        return 0.0


@dataclass(frozen=True)
class KVPath:
    """The path KV caches take from the prefill to the decode instance."""

    bandwidth: float  # bytes/s, one direction, after the link's collective efficiency
    latency: float  # s per transfer
    via: str  # what the path is, for the report


def kv_path(
    prefill: System, decode: System, prefill_devices: int, decode_devices: int
) -> KVPath:
    """Bandwidth of the KV transfer between an instance of ``prefill_devices`` on
    ``prefill`` and one of ``decode_devices`` on ``decode``.

    Same system: the pools share its fabric; an instance that fits in one node uses the
    intra-node ports (the NVLink domain of an NVL72, a UB switch), else the per-device
    NIC share (the supernode port on CloudMatrix / Atlas 950). Different systems: the NICs
    of each instance, the slower side bounding the flow.
    """
    if prefill.name == decode.name and prefill.path == decode.path:
        s = prefill
        eff_intra = s.collective_efficiency.intra_node
        eff_inter = s.collective_efficiency.inter_node
        if prefill_devices + decode_devices <= s.devices_per_node:
            n = min(prefill_devices, decode_devices)
            return KVPath(n * s.intra_link.bandwidth * eff_intra, s.intra_link.latency,
                          f"{s.name} scale-up fabric ({s.intra_topology})")
        n = min(prefill_devices, decode_devices)
        return KVPath(n * _nic_share(s) * eff_inter, s.nic.latency,
                      f"{s.name} {'supernode fabric' if s.inter_topology == 'supernode' else 'NICs'}")
    send = prefill_devices * _nic_share(prefill) * prefill.collective_efficiency.inter_node
    recv = decode_devices * _nic_share(decode) * decode.collective_efficiency.inter_node
    return KVPath(min(send, recv), max(prefill.nic.latency, decode.nic.latency),
                  f"NICs ({prefill.name} -> {decode.name})")


def _nic_share(s: System) -> float:
    """NIC bandwidth one device owns (bytes/s): its NICs' share of the node's."""
    return s.nic.bandwidth * s.nics_per_node / s.devices_per_node


def transfer_times(done_s: list[float], nbytes: list[float], path: KVPath) -> list[float]:
    """Arrival times of KV caches sent in FIFO order over one path (index-aligned)."""
    if path.bandwidth <= 0:
        raise InputError("the KV path between the pools has no bandwidth")
    order = sorted(range(len(done_s)), key=lambda i: done_s[i])
    free = 0.0
    out = [0.0] * len(done_s)
    for i in order:
        start = max(done_s[i], free)
        free = start + nbytes[i] / path.bandwidth
        out[i] = free + path.latency
    return out


@dataclass
class DisaggResult:
    prefill: ServeResult
    decode: ServeResult
    requests: list[Request]  # the user's view: arrival, first token, finish
    path: KVPath
    kv_bytes: float  # total moved
    transfer_s_mean: float

    def metrics(self, slo_ttft_s: float | None = None, slo_tpot_s: float | None = None) -> dict:
        combined = ServeResult(
            self.requests,
            max((r.finish_s for r in self.requests if r.finish_s is not None), default=0.0),
            self.decode.steps,
            self.prefill.prefill_steps,
            self.prefill.preemptions + self.decode.preemptions,
            self.decode.mean_batch,
            self.decode.kv_capacity_tokens,
        )
        m = combined.metrics()
        m["kv_transfer"] = {
            "via": self.path.via,
            "bandwidth_bytes_per_s": self.path.bandwidth,
            "latency_s": self.path.latency,
            "bytes_total": self.kv_bytes,
            "time_mean_s": self.transfer_s_mean,
        }
        m["goodput_requests_per_s"] = goodput(self.requests, m["makespan_s"], slo_ttft_s,
                                              slo_tpot_s)
        return m


def goodput(
    requests: list[Request], makespan_s: float, slo_ttft_s: float | None, slo_tpot_s: float | None
) -> float:
    """Completed requests per second that meet both SLOs (DistServe's goodput); with no
    SLO given, every completed request counts."""
    if not makespan_s:
        return 0.0
    ok = 0
    for r in requests:
        if r.finish_s is None or r.first_token_s is None:
            continue
        if slo_ttft_s is not None and r.first_token_s - r.arrival_s > slo_ttft_s:
            continue
        if slo_tpot_s is not None and r.output > 1:
            if (r.finish_s - r.first_token_s) / (r.output - 1) > slo_tpot_s:
                continue
        ok += 1
    return ok / makespan_s


def run_disaggregated(
    requests: list[Request],
    prefill_server: Server,
    decode_server: Server,
    kv_bytes_per_token: float,
    path: KVPath,
    progress: bool = False,
) -> DisaggResult:
    """Serve ``requests`` with prefill on ``prefill_server`` and decode on ``decode_server``.

    ``kv_bytes_per_token``: the KV cache of one token of context for the whole model
    (all layers and KV heads) in the KV dtype: what crosses the path per prompt token.
    """
    pre_reqs = [Request(r.id, r.arrival_s, r.prompt, 1, r.alpha) for r in requests]
    pre = prefill_server.run(pre_reqs, progress)
    done = [r.first_token_s for r in pre_reqs if r.first_token_s is not None]
    if len(done) < len(pre_reqs):
        raise InputError("the prefill pool did not finish every request")
    nbytes = [r.prompt * kv_bytes_per_token for r in requests]
    arrive = transfer_times(done, nbytes, path)
    dec_reqs = sorted(
        (Request(r.id, arrive[i], r.prompt, r.output, r.alpha) for i, r in enumerate(requests)),
        key=lambda r: r.arrival_s,
    )
    dec = decode_server.run(dec_reqs, progress)
    finish = {r.id: r.finish_s for r in dec_reqs}
    user = []
    for i, r in enumerate(requests):
        u = Request(r.id, r.arrival_s, r.prompt, r.output, r.alpha)
        u.first_token_s = done[i]
        u.generated = r.output
        u.finish_s = finish[r.id] if r.output > 1 else done[i]
        user.append(u)
    transfer = np.array(arrive) - np.array(done)
    return DisaggResult(pre, dec, user, path, float(sum(nbytes)), float(transfer.mean()))
