"""CUDA-graph batch padding: the batch a generation-only step really runs at.

TensorRT-LLM 1.0's PyTorch backend captures one CUDA graph per batch size of
``cuda_graph_config.batch_sizes`` and, with ``enable_padding``, runs a generation-only
batch of B requests as the smallest captured size >= B, filling it with dummy
generation requests (tensorrt_llm/_torch/pyexecutor/model_engine.py /
cuda_graph_runner.py ``_get_padded_batch``: ``padded_batch_size =
self._round_up_batch_size(new_batch_size)``; ``batch.generation_requests.extend(
[self.padding_dummy_request] * padding_size)``; the dummy is added by
``kv_cache_manager.add_dummy_requests(..., is_gen=True)`` with one KV token). The captured
sizes are the configured ones that fit ``min(max_batch_size, max_num_tokens)``, plus
that bound itself when a configured size exceeds it (``_filter_cuda_graph_batch_sizes``:
"padding to max_cuda_graph_bs is acceptable"). The perf-overview (v1.0) runs pass
``enable_padding: true`` with sizes 1, 2, 4, ..., 128, 256, 384, 512, 1024, ..., 8192.

So the dummies' GEMM rows, norms and logits are computed like real ones, while their
attention reads one KV token each. ``StepCosts`` prices a padded step as the step of the
padded batch at the mean context that keeps the real requests' KV total (``padded_step``).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def capture_sizes(sizes: Sequence[int], max_batch: int, max_tokens: int) -> tuple[int, ...]:
    """The batch sizes that get a graph (``_filter_cuda_graph_batch_sizes`` with padding
    on and no draft tokens): the configured sizes up to min(max_batch, max_tokens), plus
    that bound when a larger size was configured."""
    bound = min(max_batch, max_tokens)
    kept: list[int] = []
    for size in sorted(sizes):
        if size <= bound:
            kept.append(size)
        else:
            if not kept or kept[-1] != bound:
                kept.append(bound)
            break
    return tuple(kept)


def padded_batch(batch: int, captured: Sequence[int]) -> int:
    """The batch a generation-only step of ``batch`` requests runs at: the smallest
    captured size >= batch, or ``batch`` itself when none is that large (no graph: the
    step runs eagerly, unpadded) or no graphs are captured."""
    i = bisect.bisect_left(captured, batch)
    return captured[i] if i < len(captured) else batch


def padded_step(batch: int, context: float, captured: Sequence[int]) -> tuple[int, float]:
    """(sequences, mean context) a generation-only step of ``batch`` requests at mean
    ``context`` is priced at: the padded batch, at the mean context that keeps the
    real requests' KV total (each dummy holds one token; its one-token read is left out)."""
    padded = padded_batch(batch, captured)
    if padded == batch:
        return batch, context
    return padded, context * (batch / padded)


def padding_dummies(pad_rows: str, batch: int, padded: int) -> int:
    """Of a step of ``batch`` requests run at ``padded``, the padding rows an MoE layer sees
    as one token: all of them when every dummy carries the same input (``pad_rows``
    "identical", ``EngineProfile.cuda_graph_pad_rows``: vLLM V0 pads with token 0 at
    position 0), none when they route like distinct tokens ("distinct")."""
    return padded - batch if pad_rows == "identical" else 0


__all__ = ["capture_sizes", "padded_batch", "padded_step", "padding_dummies"]
