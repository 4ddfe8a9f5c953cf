"""MosaicML Composer with PyTorch FSDP1 (framework 'composer-fsdp1', the llm-foundry MPT
rows): FSDP1's post-backward gradient passes and Composer's eager DecoupledAdamW with
FSDP's clip_grad_norm_ scaling (sim/training/fsdp1.py). Hand-computed bytes."""

from __future__ import annotations

import pytest
from xpusim.hwprofiles import load_system
from xpusim.sim.models.hf_config import load_model
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training import fsdp1
from xpusim.sim.training.chunks import Chunk
from xpusim.sim.training.simulate import lower_step
from xpusim.sim.training.units import _fsdp1_grad_passes, grad_accum_bytes_per_param


@pytest.mark.parametrize("world,pre", [(1, 1), (2, 2), (8, 4), (16, 4), (32, 8), (64, 8)])
def test_predivide_factor_is_fsdps(world, pre):
    # largest power of two f with world % f == 0 and world / f > f (DefaultState)
    assert fsdp1.predivide_factor(world) == pre


def test_grad_path_fp32_reduce_of_a_bf16_gradient():
    # full unit: cast 2 + 4, predivide 4 + 4 = 14 B; shard (1/8): postdivide 2 4 + 4 = 8 B
    assert fsdp1.grad_path_bytes(1000.0, 8, 2.0, 4.0, 1) == pytest.approx(1000 * (14 + 8 / 8))
    # four micro-batches: the saved-shard add (4 + 4 + 4 B) on three of them
    assert fsdp1.grad_path_bytes(1000.0, 8, 2.0, 4.0, 4) == pytest.approx(
        1000 * (14 + (8 + 12 * 3 / 4) / 8))


def test_grad_path_bf16_reduce_casts_the_shard_back_to_fp32():
    # no cast of the unit, predivide 2 + 2; shard: postdivide 2 + 2, cast to fp32 2 + 4
    assert fsdp1.grad_path_bytes(1000.0, 8, 2.0, 2.0, 1) == pytest.approx(1000 * (4 + 10 / 8))


def test_grad_path_on_two_ranks_has_no_postdivide():
    # predivide 2, postdivide 1: the shard only gets the accumulate (m = 2: once in two)
    assert fsdp1.grad_path_bytes(10.0, 2, 4.0, 4.0, 2) == pytest.approx(10 * (8 + 6 / 2))


def test_decoupled_adamw_moves_80_bytes_per_fp32_parameter():
    # mul_ 8, add_ 8 + 4, mul_ 8, addcmul_ 8 + 4, sqrt 8, divide 8, add_ eps 8, addcdiv_ 16
    assert fsdp1.decoupled_adamw_bytes_per_param() == 80.0


def _plan(framework: str, **kw) -> ParallelPlan:
    return ParallelPlan(framework=framework, zero=3, dp=8, mbs=1, gbs=8, seq=128,
                        grad_reduce_dtype="fp32", **kw)


def test_unit_pass_covers_dense_and_expert_parameters():
    chunk = Chunk(0, [("l0", [])], 100.0, 20.0, 0.0, 0.0, [(100.0, 20.0)])
    ops = _fsdp1_grad_passes(chunk, _plan("composer-fsdp1"), 0)
    assert [o.name for o in ops] == ["fsdp1.grad_passes"]
    assert ops[0].main_bytes == pytest.approx(120 * (14 + 8 / 8))
    assert _fsdp1_grad_passes(chunk, _plan("eager"), 0) == []


def test_no_megatron_main_grad_add_under_fsdp1():
    plan = _plan("composer-fsdp1", grad_accum_fusion=False)
    assert grad_accum_bytes_per_param(plan) == 0.0
    assert grad_accum_bytes_per_param(_plan("eager", grad_accum_fusion=False)) == 2 + 8


def test_optimizer_is_composers_decoupled_adamw_after_the_clip_scale():
    spec, sysm = load_model("mpt-bench-125m"), load_system("dgx-h100", nodes=1)

    def step_ops(framework: str) -> dict[str, float]:
        lr = lower_step(spec, sysm, _plan(framework)).ranks[0]
        return {o.name: o.main_bytes for o in lr.optimizer_prep + lr.optimizer_step}

    composer, fused = step_ops("composer-fsdp1"), step_ops("eager")
    assert composer["adam"] / fused["adam"] == pytest.approx(80 / 30)  # fused: 4 + 24 + 2
    assert composer["grad_norm"] / fused["grad_norm"] == pytest.approx(12 / 4)  # norm + scale
