"""A tiny study shared by the study, executor and what-if tests (runs in seconds)."""

TINY_STUDY = """
name = "tiny"
[hardware]
system = "atlas-800t-a2"
nodes = 1
[fixed]
seq = 512
global_batch = 16
vocab = 1000
total_params = 8e6
total_params_tolerance = 0.25
[space]
layers = [2, 4]
hidden = [256, 512]
attention = ["gqa", "mla"]
heads = [4, 8]
kv_heads = [2]
head_dim = [64]
q_lora_rank = [128]
kv_lora_rank = [64]
qk_nope_head_dim = [32]
qk_rope_head_dim = [16]
v_head_dim = [32]
dense_ffn = [1024]
num_experts = [8]
top_k = [2]
expert_ffn = [256]
first_dense_layers = [1]
constraints = ["hidden / heads >= 64"]
[plans]
tp = [1, 2]
pp = [1, 2]
vpp = [1]
ep = [1, 2]
mbs = [1]
recompute = ["none"]
[search]
shortlist = 3
plans_per_model = 1
"""
