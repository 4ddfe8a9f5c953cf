"""The memory plan holds the vocabulary tables as the engine does (kvcache.VocabLayout).

Hand-computed on Llama-2-70B: embedding = LM head = 32,000 x 8,192 = 262,144,000
parameters, 68,976,648,192 parameters in all, KV 2 x 80 layers x 8 heads x 128 = 163,840
values per token (1 byte each in FP8).
"""

from __future__ import annotations

import pytest
from xpusim.sim.inference.engine_profile import load_engine
from xpusim.sim.inference.kvcache import (
    SPLIT_VOCAB,
    VocabLayout,
    plan_memory,
    stage_memory,
    vocab_bytes_delta,
)
from xpusim.sim.models import load_model

TABLE = 262_144_000  # 32,000 x 8,192
GIB = 2**30
TRT010 = VocabLayout(tables_16bit=True, head_parallel=True, embedding_parallel=False)


@pytest.fixture(scope="module")
def llama70b():
    return load_model("llama-2-70b")


def test_default_layout_adds_nothing(llama70b) -> None:
    assert vocab_bytes_delta(llama70b, 2, "fp8", SPLIT_VOCAB) == 0.0


def test_fp8_tp1_tables_16bit(llama70b) -> None:
    # Both tables at 2 bytes instead of 1: + 262,144,000 x 1 twice.
    assert vocab_bytes_delta(llama70b, 1, "fp8", TRT010) == pytest.approx(2 * TABLE)


def test_fp16_tp2_embedding_whole(llama70b) -> None:
    # FP16: the tables are already 2 bytes; the embedding is whole on each rank
    # (2 bytes instead of 2/2), the LM head split as before.
    assert vocab_bytes_delta(llama70b, 2, "fp16", TRT010) == pytest.approx(TABLE * 1.0)


def test_fp8_tp2_embedding_whole_16bit(llama70b) -> None:
    # Embedding 2 bytes whole instead of 1/2: +1.5 per entry; LM head 2/2 instead of
    # 1/2: +0.5 per entry.
    assert vocab_bytes_delta(llama70b, 2, "fp8", TRT010) == pytest.approx(TABLE * 2.0)


def test_whole_tables_gpt_fast_style(llama70b) -> None:
    # vocab_parallel false: both tables whole at the run's dtype; TP4 bf16 holds
    # 2 - 2/4 = 1.5 extra bytes per entry of each table.
    whole = VocabLayout(tables_16bit=False, head_parallel=False, embedding_parallel=False)
    assert vocab_bytes_delta(llama70b, 4, "bf16", whole) == pytest.approx(2 * TABLE * 1.5)


def test_plan_memory_trtllm010_h100_tp1(llama70b) -> None:
    # 0.9 x 80 GiB = 77,309,411,328; weights 68,976,648,192 + 524,288,000 (16-bit tables);
    # activations 2,048 x (2 x 8,192 + 2 x 28,672) x 1 + 2,048 x 32,000 x 4 = 413,138,944;
    # KV room 7,395,336,192 bytes / 163,840 = 45,137.55 tokens (48,337.55 with FP8 tables).
    plan = plan_memory(llama70b, 80 * GIB, 1, 1, "fp8", 0.9, 2048, vocab=TRT010)
    assert plan.weights == pytest.approx(69_500_936_192)
    assert plan.kv_cache == pytest.approx(7_395_336_192)
    assert plan.kv_tokens == pytest.approx(45_137.55)
    base = plan_memory(llama70b, 80 * GIB, 1, 1, "fp8", 0.9, 2048)
    assert base.kv_tokens == pytest.approx(48_337.55)


def test_stages_hold_their_own_table(llama70b) -> None:
    # pp 2: the first stage holds the embedding, the last the LM head; each gains one
    # table's 1 byte per entry in FP8 at TP1.
    base = stage_memory(llama70b, 80 * GIB, 1, 1, 2, "fp8", 0.9, 2048)
    trt = stage_memory(llama70b, 80 * GIB, 1, 1, 2, "fp8", 0.9, 2048, vocab=TRT010)
    assert [t.weights - b.weights for t, b in zip(trt, base, strict=True)] == pytest.approx(
        [TABLE, TABLE]
    )


def test_engine_profiles_state_their_layout() -> None:
    assert load_engine("trtllm-0.10").vocab_layout() == TRT010
    assert load_engine("gpt-fast").vocab_layout() == VocabLayout(False, False, False)
    assert load_engine("vllm-0.6").vocab_layout() == SPLIT_VOCAB
