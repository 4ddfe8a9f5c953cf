"""DeepEP-Ascend's normal kernels on a supernode (sgl-kernel-npu, A3 / CloudMatrix384).

``deepep`` on a Huawei supernode runs sgl-kernel-npu's CamMoeDispatchNormal /
CamMoeCombineNormal (csrc/deepep/ops/op_kernel/cam_moe_dispatch_normal.h,
cam_moe_combine_normal.h; the earlier moe_dispatch_normal.h has the same steps):

* **One row per (token, expert) copy.** InputToShare loops over ``bs * topK``
  (token, k) pairs and writes one row per pair; two experts of one die get two rows
  ("todo 1. Duplicate transmission to experts of the same rank",
  tests/python/deepep/test_intranode.py, whose ``recv_x`` -- the benchmark's
  numerator -- has one row per pair). The combine sends one row per (token, k) back
  (CopyBufferToShare into slot ``srcTokenId * K + srcTopkId``).
* **Dispatch stages, then pulls.** Process() runs InputToShare (every copy: read the
  BF16 token from HBM, quantise it, write the row into the die's *own* window),
  SetStatus, WaitStatus (spins until every source has set its flag, then SyncAll),
  and only then ShareToOutput, which reads the rows from the *sources'* windows over
  UB. The staging pass therefore adds to the transfer.
* **Combine sends, then reduces.** Process() runs CopyBufferToShareAndSetStatus
  (every row pushed into the source die's window) and then ReadBufferFromRemote on
  the same cores: per token, wait for its k rows, read them, weight, sum, write one
  token. A core starts reducing only after its own sends, so the reduce adds to the
  transfer.

Both passes are priced on the device's memory roofline, the curve of
sim/cost/roofline.py ((bytes + half) / (HBM bandwidth x memory_max)), as
``local_pass_s`` prices the low-latency kernels' local pass: a lower bound, since
the copies go through the Unified Buffer and the quantisation's vector work is
double-buffered against them (``BUFFER_NUM = 2``).
"""

from __future__ import annotations

# sgl-kernel-npu tests/utils.py / the CANN kernels take BF16 activations: the staging
# pass reads a BF16 token (XType) for every copy, whatever the dispatch dtype.
ASCEND_INPUT_BYTES_PER_ELEMENT = 2.0


def staging_bytes(rows: float, hidden: int, row_bytes: float) -> float:
    """HBM bytes of the dispatch staging pass (InputToShare): each of ``rows`` copies
    reads its BF16 token and writes its ``row_bytes`` row into the local window."""
    return rows * (hidden * ASCEND_INPUT_BYTES_PER_ELEMENT + row_bytes)


def reduce_bytes(rows: float, tokens: float, token_bytes: float) -> float:
    """HBM bytes of the combine reduce (ReadBufferAndWeightedSum): ``rows`` returned
    copies read from the window, one weighted sum written per token."""
    return rows * token_bytes + tokens * token_bytes
