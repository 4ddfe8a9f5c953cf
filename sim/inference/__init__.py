"""Inference: lowering of prefill/decode steps to per-rank IR, KV-cache memory,
continuous-batching serving and speculative decoding (docs/inference.md,
docs/speculative_decoding.md)."""
