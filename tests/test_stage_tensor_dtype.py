"""The hidden states between layers and pipeline stages stay 16-bit under every
low-precision recipe (TransformerEngine quantises inside a linear; Megatron-Core sends in
``pipeline_dtype``): a stage's input and its pipeline send weigh the same under FP8, MXFP8
and NVFP4 as under bf16."""

from __future__ import annotations

import pytest
from xpusim.sim.parallel import ParallelPlan
from xpusim.sim.training.items import act_dtype


@pytest.mark.parametrize(
    "dtype, stage",
    [("fp8", "bf16"), ("mxfp8", "bf16"), ("nvfp4", "bf16"), ("hif8", "bf16"),
     ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")],
)
def test_stage_tensor_dtype(dtype, stage):
    assert act_dtype(ParallelPlan(dtype=dtype)) == stage


def test_fp8_stage_input_is_bf16():
    """A stage's input (saved for the backward, sent to the next stage): mbs x seq x hidden
    x 2 B under FP8 as under bf16, 1 x 4096 x 4096 x 2 = 32 MiB (no sequence parallelism)."""
    from xpusim.hwprofiles import load_system
    from xpusim.sim.layout import Layout
    from xpusim.sim.models.hf_config import load_model
    from xpusim.sim.parallel import ParallelPlan, validate_plan
    from xpusim.sim.training.chunks import build_chunks, slot_context

    spec = load_model("llama-3-8b")
    system = load_system("dgx-h100", nodes=1)

    def input_bytes(dtype: str) -> float:
        plan = validate_plan(spec, ParallelPlan(tp=2, pp=4, mbs=1, gbs=8, seq=4096,
                                                dtype=dtype), 8)
        layout = Layout(plan)
        comp, _ = slot_context(spec, plan, system, layout, 0, False)
        return build_chunks(spec, plan, comp, 0)[0].input_bytes

    assert input_bytes("fp8") == input_bytes("bf16") == 4096 * 4096 * 2
