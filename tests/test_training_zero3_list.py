"""DeepSpeed 0.3's ZeRO-3 (framework 'deepspeed-0.3'): per-tensor list collectives with
one copy per group member, blocking. Hand-computed counts and sizes."""

from xpusim.sim import ops
from xpusim.sim.ir import CollectiveKind, OpKind, Role, Weight
from xpusim.sim.training import items as L
from xpusim.sim.training.framework import framework_profile
from xpusim.sim.training.units import _per_tensor, list_copies, param_tensors


def test_param_tensors_counts_weight_and_bias_per_linear_and_norm():
    w = Role(weight=Weight.DENSE, weight_elements=100)
    items = [
        ops.elementwise("ln", 10, kind=OpKind.NORM),
        ops.gemm("qkv", 8, 30, 10, role=w),
        ops.elementwise("gelu", 10),
        ops.gemm("fc", 8, 10, 10, role=w),
        L.Comm("tp", CollectiveKind.ALL_REDUCE, 4.0, "tp"),
    ]
    assert param_tensors(items) == 2 * 3  # (ln, qkv, fc) x (weight, bias)
    assert param_tensors([]) == 1


def test_list_copies_one_per_member_and_tensor_moving_the_tensor_twice():
    comms = [L.Comm("ag", CollectiveKind.ALL_GATHER, 1200.0, "dp_dense")]
    copies = list_copies(comms, members=4, tensors=3)
    assert len(copies) == 12
    # read + write of the whole 1200 B once over the 12 copies
    assert sum(c.bytes["hbm"] for c in copies) == 2 * 1200.0
    per = _per_tensor(comms, 3)
    assert [c.nbytes for c in per] == [400.0] * 3
    assert len({c.name for c in per}) == 3


def test_host_time_of_the_copies_at_1536_ranks():
    # 12 tensors x 1536 members x 10 us = 184.3 ms of host launches per slot and pass
    prof = framework_profile("deepspeed-0.3")
    assert prof.zero3_list_collectives and not framework_profile("eager").zero3_list_collectives
    copies = list_copies([L.Comm("ag", CollectiveKind.ALL_GATHER, 1e9, "dp_dense")], 1536, 12)
    assert abs(len(copies) * prof.host_op_s - 0.18432) < 1e-9
