"""PyTorch FSDP1 under MosaicML Composer: the HBM passes its gradient path and optimizer
add to a step (framework ``composer-fsdp1``; the llm-foundry MPT rows, T42).

Gradient path, per FSDP unit and micro-batch (``torch/distributed/fsdp/_runtime_utils.py``
@ 00ae0bc91ac2c1718d1baa193d9d299e2b82776c, ``_post_backward_hook``; the default
communication hook ``torch/distributed/algorithms/_comm_hooks/default_hooks.py``
@ 07b3040a4d10eb6c1254f87d39b086fe2f16af4c, ``reduce_scatter_hook`` and
``DefaultState._get_gradient_predivide_factor``). Autograd leaves the unit's unsharded
gradient in the compute dtype (``flat_param.grad``); on FSDP's post-backward stream:

- ``flat_param.grad.to(handle._reduce_dtype)`` when the two dtypes differ: read the
  16-bit gradient, write the reduce-dtype copy (every parameter of the unit);
- ``grad.div_(gradient_predivide_factor)`` before the reduce-scatter when the factor is
  above 1 (read + write, every parameter of the unit);
- ``output.div_(gradient_postdivide_factor)`` on the reduced shard (1/N of the unit);
- ``_cast_grad_to_param_dtype``: the shard back to the sharded parameter's dtype (fp32)
  when the reduce dtype differs (1/N);
- ``flat_param._saved_grad_shard += new_sharded_grad`` from the second micro-batch on
  (read two fp32 shards, write one; 1/N).

The predivide factor is the largest power of two f with N % f == 0 and N / f > f
(N = 8 gives 4, then a postdivide of 2; N = 64 gives 8 and 8).

Those kernels run on the post-backward stream while the next unit's backward computes.
They are priced here on the compute stream, after the unit's backward and before its
reduce-scatter (which, in FSDP1, waits for them): an elementwise kernel of millions of
elements holds the SMs it is given while it runs, so its HBM time is not free, but how
much of it a concurrent compute-bound GEMM hides is not sourced. Priced serially, it is
an upper bound on their cost.

Optimizer: Composer's ``DecoupledAdamW`` (``composer/optim/decoupled_weight_decay.py``
@ 02c872e43c708781bba06355a4e673557f3d5056, the static ``adamw``; the llm-foundry yamls'
``optimizer: name: decoupled_adamw``, weight_decay 0.0) loops over the parameters
and runs each step as separate eager kernels, on fp32 parameters, fp32 gradients (FSDP
casts the shard back, above) and fp32 moments:
``exp_avg.mul_(beta1)`` (8 B), ``.add_(grad, alpha)`` (8 + g), ``exp_avg_sq.mul_(beta2)``
(8), ``.addcmul_(grad, grad, value)`` (8 + g: the two operands are the same tensor, one
HBM read), ``exp_avg_sq.sqrt()`` (8), ``/ math.sqrt(bias_correction2)`` (8), ``.add_(eps)``
(8), ``param.addcdiv_(exp_avg, denom, value)`` (16): 72 + 2g bytes per parameter
(80 with fp32 gradients), against the fused optimizer's 30 (``lowering.adam_bytes_per_param``).
With ``weight_decay != 0`` a ``param.mul_`` (8 B) would come first; the rows set 0.

Gradient clipping: Composer's ``gradient_clipping`` algorithm calls the root FSDP
module's ``clip_grad_norm_`` (``composer/algorithms/gradient_clipping/gradient_clipping.py``,
``apply_gradient_clipping``), which after the norm multiplies every local gradient by the
clamped coefficient unconditionally (``grad.detach().mul_(clip_coef_clamped...)``, "it
avoids the host-device sync"; ``torch/distributed/fsdp/fully_sharded_data_parallel.py``
@ 6d71f74c873d9517c9f41454ae153189822b17af, ``clip_grad_norm_``): a read and a write of
the fp32 shard, 8 B per parameter, after the norm's read.
"""

from __future__ import annotations

FP32 = 4.0
# Composer DecoupledAdamW, per parameter with fp32 state, beyond the gradient reads:
# mul_ (8), add_ (8), mul_ (8), addcmul_ (8), sqrt (8), divide (8), add_ eps (8),
# addcdiv_ (16) = 72 B (module docstring).
DECOUPLED_ADAMW_STATE_BYTES = 72.0
CLIP_SCALE_BYTES = 2 * FP32  # grad.mul_(clip_coef) on the fp32 shard: read + write


def predivide_factor(world: int) -> int:
    """FSDP's gradient predivide factor for a reduce group of ``world`` ranks
    (``DefaultState._get_gradient_predivide_factor``): the postdivide is world / it."""
    if world < 1:
        raise ValueError(f"reduce group size must be positive, got {world}")
    factor = 1
    while world % factor == 0 and world / factor > factor:
        factor *= 2
    return factor


def grad_path_bytes(params: float, world: int, grad_bytes: float, reduce_bytes: float,
                    microbatches: int, param_bytes: float = FP32) -> float:
    """HBM bytes of FSDP1's post-backward passes over one unit of ``params`` parameters
    sharded over ``world`` ranks, averaged over ``microbatches`` micro-batches per step
    (the accumulation into the saved shard starts with the second)."""
    if world < 1 or microbatches < 1:
        raise ValueError("world and microbatches must be positive")
    pre = predivide_factor(world)
    post = world / pre
    full = 0.0
    if grad_bytes != reduce_bytes:
        full += grad_bytes + reduce_bytes  # flat_param.grad.to(reduce_dtype)
    if pre > 1:
        full += 2 * reduce_bytes  # grad.div_(predivide)
    shard = 0.0
    if post > 1:
        shard += 2 * reduce_bytes  # output.div_(postdivide)
    if reduce_bytes != param_bytes:
        shard += reduce_bytes + param_bytes  # _cast_grad_to_param_dtype
    shard += 3 * param_bytes * (microbatches - 1) / microbatches  # _saved_grad_shard +=
    return params * (full + shard / world)


def decoupled_adamw_bytes_per_param(grad_bytes: float = FP32) -> float:
    """HBM bytes per parameter of Composer's unfused DecoupledAdamW step (two reads of
    the gradient: ``add_`` and ``addcmul_``)."""
    return DECOUPLED_ADAMW_STATE_BYTES + 2 * grad_bytes
