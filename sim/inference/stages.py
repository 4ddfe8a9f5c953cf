"""Pipeline stages of an inference deployment: which layers each stage holds, and what
one stage sends the next.

``stage_layers`` is vLLM 0.6's split; ``activation_send`` the bytes one tensor-parallel
rank of a stage sends its peer in the next stage (sim/inference/pipeline.py prices the
stages and the sends; docs/inference.md, "Pipeline parallelism").
"""

from __future__ import annotations

from xpusim.sim.errors import InputError
from xpusim.sim.ir import dtype_bytes


def stage_layers(layers: int, pp: int) -> list[tuple[int, int]]:
    """[start, end) of each of ``pp`` contiguous stages over ``layers`` layers: an even
    split, the remainder on the last stage.

    vLLM 0.6's ``get_pp_indices`` (vllm/distributed/utils.py, since PR #6115, July 2024;
    the v0.6 line): ``layers_per_partition = num_hidden_layers // pp_size``, stage r
    starts at ``r * layers_per_partition``, and the last stage ends at
    ``num_hidden_layers`` ("If the number of layers is not divisible by the number of
    partitions, the last partition will have the remaining layers"). vLLM's PR #13839
    (February 2025, after the 0.6 line) moved the remainder onto the stages before the
    last; ``VLLM_PP_LAYER_PARTITION`` (an explicit split) is not modelled.
    """
    if pp < 1 or pp > layers:
        raise InputError(
            f"--pp {pp}: a model of {layers} layers splits into 1..{layers} stages; "
            f"use --pp between 1 and {layers}"
        )
    per = layers // pp
    return [(r * per, layers if r == pp - 1 else (r + 1) * per) for r in range(pp)]


# Tensors a stage hands the next: vLLM's decoder models return
# IntermediateTensors({"hidden_states": ..., "residual": ...}) from a stage that is not the
# last (vllm/model_executor/models/llama.py, LlamaModel.forward: the pre-norm residual
# stream travels beside the hidden states).
SENT_TENSORS = 2


def activation_send(tokens: float, hidden: int, tp: int, dtype: str = "bf16") -> float:
    """Bytes one TP rank sends its peer in the next stage for ``tokens`` tokens: each of
    the ``SENT_TENSORS`` tokens x hidden tensors in the 16-bit activation dtype, split
    over the TP group. vLLM 0.6's worker sends with
    ``get_pp_group().send_tensor_dict(..., all_gather_group=get_tp_group())``
    (vllm/worker/worker_base.py, LocalOrDistributedWorkerBase.execute_model), and
    ``GroupCoordinator.send_tensor_dict`` (vllm/distributed/parallel_state.py) sends only
    rank i's 1/tp slice ("send-allgather: send only a slice, then do allgather"); the
    receiving TP group all-gathers the slices (``recv_tensor_dict``)."""
    return SENT_TENSORS * tokens * hidden * dtype_bytes(dtype) / tp
