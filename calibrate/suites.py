"""What calibration measures: microbenchmarks and real-kernel suites, each case
paired with the IR the simulator prices for it.

A ``Suite`` lists shapes (a full list and a quick subset), builds the IR for a
shape (microbenchmarks through ``sim.ops``, kernels through their describe()
functions via ``sim.kernel_registry``) and a zero-argument torch callable that runs
the same work. Shapes are split into fit and held-out sets by a seeded permutation
per suite (``split_shapes``), so the held-out set is fixed by the seed, not chosen;
kernel suites add out-of-range shape families (``families.py``), always held out.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from xpusim.calibrate import exp_micro as em
from xpusim.calibrate import gpu_grids
from xpusim.calibrate import page_fault_micro as pf
from xpusim.calibrate.families import OUT_OF_RANGE, is_out_of_range
from xpusim.calibrate.kernel_runners import (
    Shape,
    attention_runner,
    cdc_runner,
    inference_mode,
    moe_ops,
    moe_routing_histogram,
    moe_runner,
    seeded_randn,
)
from xpusim.sim import ops
from xpusim.sim.errors import InputError
from xpusim.sim.ir import Op, RankGraph
from xpusim.sim.kernel_registry import describe_kernel
from xpusim.sim.workloads.moe import SILU_FLOPS

DEFAULT_SEED = 20260
HELDOUT_FRACTION = 0.35

@dataclass(frozen=True)
class Case:
    """One measured configuration: a suite, a shape, and whether it is fit or held out.

    ``routing`` (MoE cases only) is the rows each expert received when the case was
    measured, as recorded in the measurements CSV: with it the case's graph is built
    without torch; without it ``moe_routing_histogram`` reruns the router (needs torch).
    It is a record of the run, not part of the case's identity (``compare=False``).
    """

    suite: str
    shape: tuple[tuple[str, float], ...]
    split: str  # "fit" | "heldout"
    dtype: str
    routing: tuple[int, ...] | None = field(default=None, compare=False)

    @property
    def params(self) -> Shape:
        return dict(self.shape)

    @property
    def name(self) -> str:
        return f"{self.suite}[" + ",".join(f"{k}={_fmt(v)}" for k, v in self.shape) + "]"

    def graph(self) -> RankGraph:
        shape: dict = self.params
        if self.routing is not None:
            shape = {**shape, "tokens_per_expert": self.routing}
        return SUITES[self.suite].graph(shape, self.dtype)

    def with_routing(self, torch_device: str = "cpu") -> Case:
        """This case with its MoE routing histogram filled in (others: unchanged), routed
        on ``torch_device``: the device the case was timed on routes as it did then."""
        if self.suite != "moe" or self.routing is not None:
            return self
        hist = moe_routing_histogram(self.shape, self.dtype, torch_device)
        return replace(self, routing=tuple(int(v) for v in hist))

    def runner(self, torch_device: str) -> Callable[[], object]:
        return SUITES[self.suite].runner(self.params, self.dtype, torch_device)

    @property
    def family(self) -> str:
        """'out-of-range' for a shape of the suite's out-of-range families (never fitted,
        outside the grid's ranges: ``calibrate/families.py``), else 'in-range'."""
        return "out-of-range" if is_out_of_range(self.suite, self.params) else "in-range"


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


@dataclass(frozen=True)
class Suite:
    name: str
    kind: str  # "micro" | "kernel"
    full: tuple[Shape, ...]
    quick: tuple[Shape, ...]
    build_ops: Callable[[Shape, str], list[Op] | RankGraph]
    build_runner: Callable[[Shape, str, str], Callable[[], object]]

    def graph(self, shape: Shape, dtype: str) -> RankGraph:
        built = self.build_ops(shape, dtype)
        if isinstance(built, RankGraph):
            return built
        g = RankGraph(0)
        prev: tuple[int, ...] = ()
        for op in built:
            prev = (g.add(op, deps=prev),)
        return g

    def runner(self, shape: Shape, dtype: str, device: str) -> Callable[[], object]:
        return self.build_runner(shape, dtype, device)


# ---------------------------------------------------------------- microbenchmarks

_GEMM_SIZES = (64, 127, 256, 384, 512, 1000, 1024)


def _gemm_shapes(sizes: tuple[int, ...], limit_flops: float) -> tuple[Shape, ...]:
    out = []
    for m, n, k in itertools.product(sizes, repeat=3):
        if 2.0 * m * n * k <= limit_flops:
            out.append({"m": m, "n": n, "k": k})
    return tuple(out)


def _gemm_runner(s: Shape, dtype: str, device: str):
    import torch

    a = seeded_randn(int(s["m"]), int(s["k"]), dtype=dtype, device=device)
    b = seeded_randn(int(s["k"]), int(s["n"]), dtype=dtype, device=device)
    return inference_mode(lambda: torch.mm(a, b))


def _bmm_runner(s: Shape, dtype: str, device: str):
    import torch

    a = seeded_randn(int(s["batch"]), int(s["m"]), int(s["k"]), dtype=dtype, device=device)
    b = seeded_randn(int(s["batch"]), int(s["k"]), int(s["n"]), dtype=dtype, device=device)
    return inference_mode(lambda: torch.bmm(a, b))


def _memcpy_runner(s: Shape, dtype: str, device: str):
    import torch

    numel = int(s["bytes"]) // 4
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return inference_mode(lambda: dst.copy_(src))


def _add_runner(s: Shape, dtype: str, device: str):
    import torch

    a = seeded_randn(int(s["numel"]), dtype=dtype, device=device)
    b = seeded_randn(int(s["numel"]), dtype=dtype, device=device)
    return inference_mode(lambda: torch.add(a, b))


def _silu_runner(s: Shape, dtype: str, device: str):
    import torch

    a = seeded_randn(int(s["numel"]), dtype=dtype, device=device)
    return inference_mode(lambda: torch.nn.functional.silu(a))


def _softmax_runner(s: Shape, dtype: str, device: str):
    import torch

    x = seeded_randn(int(s["rows"]), int(s["cols"]), dtype=dtype, device=device)
    return inference_mode(lambda: torch.softmax(x, dim=-1))


def _layernorm_runner(s: Shape, dtype: str, device: str):
    import torch

    h = int(s["hidden"])
    x = seeded_randn(int(s["tokens"]), h, dtype=dtype, device=device)
    w = seeded_randn(h, dtype=dtype, device=device)
    b = seeded_randn(h, dtype=dtype, device=device)
    return inference_mode(lambda: torch.nn.functional.layer_norm(x, (h,), w, b))


def _conv_runner(s: Shape, dtype: str, device: str):
    import torch

    kk = int(s["kernel"])
    x = seeded_randn(
        int(s["batch"]),
        int(s["in_ch"]),
        int(s["height"]),
        int(s["width"]),
        dtype=dtype,
        device=device,
    )
    w = seeded_randn(int(s["out_ch"]), int(s["in_ch"]), kk, kk, dtype=dtype, device=device)
    return inference_mode(lambda: torch.nn.functional.conv2d(x, w, padding=kk // 2))


def _rowmax_runner(s: Shape, dtype: str, device: str):
    import torch

    x = seeded_randn(int(s["rows"]), int(s["cols"]), dtype=dtype, device=device)
    return inference_mode(lambda: torch.amax(x, dim=-1, keepdim=True))


def _rowmax_op(s: Shape, dtype: str) -> list[Op]:
    """Row max: one comparison per element; reads rows x cols, writes one value per row."""
    from dataclasses import replace
    from types import MappingProxyType

    from xpusim.sim.ir import MAIN_MEMORY, OpKind, dtype_bytes

    rows, cols = s["rows"], s["cols"]
    op = ops.elementwise("rowmax", rows * cols, dtype, 1.0, 1, 0, OpKind.REDUCTION)
    nbytes = (rows * cols + rows) * dtype_bytes(dtype)
    return [replace(op, bytes=MappingProxyType({MAIN_MEMORY: nbytes}))]


def _image_runner(kind: str):
    def build(s: Shape, dtype: str, device: str):
        import torch.nn.functional as F

        x = seeded_randn(
            1, int(s["channels"]), int(s["size"]), int(s["size"]), dtype=dtype, device=device
        )
        if kind == "pool":
            return inference_mode(lambda: F.max_pool2d(x, 2))
        return inference_mode(lambda: F.interpolate(x, scale_factor=2, mode="nearest"))

    return build


def _image_op(kind: str):
    def build(s: Shape, dtype: str) -> list[Op]:
        from xpusim.sim.workloads.cdc import maxpool2d, upsample_nearest

        c, n = int(s["channels"]), int(s["size"])
        if kind == "pool":
            return [maxpool2d("maxpool", 1, c, n, n, dtype)]
        return [upsample_nearest("upsample", 1, c, n, n, 2, dtype)]

    return build


# The vector-kind microbenchmarks (row reduction, 2x2 max-pool, nearest x2 upsample)
# measure the kinds the kernels use, so their speed and overhead are fitted from
# isolated ops, not only from residuals inside one kernel.
_ROWMAX_FULL = tuple({"rows": r, "cols": c} for r in (64, 512, 2048) for c in (64, 128, 1024))
_ROWMAX_QUICK = tuple({"rows": r, "cols": c} for r in (64, 2048) for c in (128, 1024))
_IMAGE_FULL = tuple({"channels": c, "size": n} for c in (16, 64) for n in (16, 32, 64, 128))
_IMAGE_QUICK = tuple({"channels": c, "size": n} for c in (16, 64) for n in (16, 64))
# Nearest x2 upsampling runs one of two ATen kernels on a CPU, chosen by the output size
# (sim/cost/upsample_path.py: channels-last when output H + W <= 128, i.e. input sides
# <= 32 here; generic above), each priced under its own kind: one suite per path, each with
# >= 3 fit cases in its seeded split (quick and full), so that a fit sees both kinds and
# holds out a case of each. The sides 32 / 33 are the two sides of the rule.
_UPSAMPLE_FULL = tuple({"channels": c, "size": n} for c in (16, 64) for n in (33, 48, 64, 128))
_UPSAMPLE_QUICK = tuple({"channels": c, "size": n} for c in (16, 64) for n in (64, 128))
_UPSAMPLE_CL_FULL = tuple({"channels": c, "size": n} for c in (16, 64) for n in (8, 16, 24, 32))
_UPSAMPLE_CL_QUICK = tuple({"channels": c, "size": n} for c in (16, 64) for n in (16, 32))

# SiLU = x * sigmoid(x): the same per-element count as the MoE kernel's SiLU (an exp
# plus four simple ops; sim/workloads/moe.py).
SILU_FLOPS_PER_ELEMENT = SILU_FLOPS

# Tensors stay below 32 MiB: glibc serves larger allocations with fresh mmap'd pages,
# whose first-touch page faults the `page_fault` suite below measures on their own.
_NUMELS_FULL = (4096, 32768, 262144, 1048576, 2097152, 4194304)
_NUMELS_QUICK = (4096, 262144, 4194304)
# memcpy copies into a preallocated buffer, so it can go past the caches to DRAM.
_COPY_NUMELS_FULL = (4096, 65536, 262144, 1048576, 4194304, 16777216)
_COPY_NUMELS_QUICK = (4096, 262144, 16777216)


def _micro_suites() -> list[Suite]:
    gemm_full = _gemm_shapes(_GEMM_SIZES, 2.2e9)
    gemm_quick = _gemm_shapes((64, 127, 512, 1000), 1.1e9)
    bmm_full = tuple(
        {"batch": b, "m": m, "n": n, "k": k}
        for b in (4, 16)
        for (m, n, k) in (
            (64, 64, 64),
            (128, 128, 64),
            (256, 256, 64),
            (128, 64, 128),
            (512, 512, 64),
        )
    )
    bmm_quick = bmm_full[::2]
    conv_full = tuple(
        {"batch": 1, "in_ch": c, "out_ch": o, "height": hw, "width": hw, "kernel": k}
        for c, o in ((3, 32), (32, 32), (64, 64), (64, 128))
        for hw in (24, 48, 96)
        for k in (1, 3)
    )
    # 3x3 convolutions on both sides of torch's oneDNN threshold (ConvParams::use_mkldnn,
    # fp32, batch 1, one thread: oneDNN only above 20,480 input elements; below it im2col +
    # GEMM, sim/cost/conv_path.py), in both grids, so that a fit sees enough cases of each
    # path to fit the `conv2d` and `conv2d_im2col` kinds apart.
    conv_threshold = tuple(
        {"batch": 1, "in_ch": c, "out_ch": c, "height": h, "width": w, "kernel": 3}
        for c, h, w in (
            (32, 25, 25), (32, 26, 26), (64, 17, 17), (64, 18, 18),
            (20, 32, 32), (20, 32, 33), (16, 35, 36), (16, 36, 36),
        )
    )  # fmt: skip
    conv_quick = conv_full[::3] + conv_threshold
    conv_full = conv_full + conv_threshold
    return [
        Suite(
            "gemm",
            "micro",
            gemm_full,
            gemm_quick,
            lambda s, dt: [ops.gemm("gemm", s["m"], s["n"], s["k"], dt)],
            _gemm_runner,
        ),
        Suite(
            "bmm",
            "micro",
            bmm_full,
            bmm_quick,
            lambda s, dt: [ops.gemm("bmm", s["m"], s["n"], s["k"], dt, s["batch"])],
            _bmm_runner,
        ),
        Suite(
            "memcpy",
            "micro",
            tuple({"bytes": n * 4} for n in _COPY_NUMELS_FULL),
            tuple({"bytes": n * 4} for n in _COPY_NUMELS_QUICK),
            lambda s, dt: [ops.memcpy("memcpy", s["bytes"])],
            _memcpy_runner,
        ),
        Suite(
            "add",
            "micro",
            tuple({"numel": n} for n in _NUMELS_FULL),
            tuple({"numel": n} for n in _NUMELS_QUICK),
            lambda s, dt: [ops.elementwise("add", s["numel"], dt, 1.0, 2, 1)],
            _add_runner,
        ),
        Suite(
            "silu",
            "micro",
            tuple({"numel": n} for n in _NUMELS_FULL),
            tuple({"numel": n} for n in _NUMELS_QUICK),
            lambda s, dt: [ops.elementwise("silu", s["numel"], dt, SILU_FLOPS_PER_ELEMENT)],
            _silu_runner,
        ),
        *(Suite(name, "micro", tuple({"numel": n} for n in _NUMELS_FULL),
                tuple({"numel": n} for n in em.EXP_NUMELS_QUICK), describe, runner)
          for name, describe, runner in (("exp", em.exp_ops, em.exp_runner),
                                         ("exp_masked", em.exp_masked_ops, em.exp_masked_runner))),
        Suite("page_fault", "micro", tuple({"mib": m} for m in pf.PAGE_FAULT_MIB_FULL),
              tuple({"mib": m} for m in pf.PAGE_FAULT_MIB_QUICK), pf.page_fault_ops,
              pf.page_fault_runner),
        Suite(
            "softmax",
            "micro",
            tuple({"rows": r, "cols": c} for r in (64, 256, 1024) for c in (128, 1000, 4096)),
            tuple({"rows": r, "cols": c} for r in (64, 1024) for c in (128, 4096)),
            lambda s, dt: [ops.softmax("softmax", s["rows"], s["cols"], dt)],
            _softmax_runner,
        ),
        Suite(
            "layernorm",
            "micro",
            tuple({"tokens": t, "hidden": h} for t in (64, 256, 1024) for h in (256, 1024, 4096)),
            tuple({"tokens": t, "hidden": h} for t in (64, 1024) for h in (256, 4096)),
            lambda s, dt: [ops.norm("layernorm", s["tokens"], s["hidden"], dt)],
            _layernorm_runner,
        ),
        Suite("rowmax", "micro", _ROWMAX_FULL, _ROWMAX_QUICK, _rowmax_op, _rowmax_runner),
        Suite(
            "maxpool", "micro", _IMAGE_FULL, _IMAGE_QUICK, _image_op("pool"), _image_runner("pool")
        ),
        Suite("upsample", "micro", _UPSAMPLE_FULL, _UPSAMPLE_QUICK, _image_op("upsample"),
              _image_runner("upsample")),
        Suite("upsample_cl", "micro", _UPSAMPLE_CL_FULL, _UPSAMPLE_CL_QUICK,
              _image_op("upsample"), _image_runner("upsample")),
        Suite(
            "conv2d",
            "micro",
            conv_full,
            conv_quick,
            lambda s, dt: [
                ops.conv2d(
                    "conv2d",
                    int(s["batch"]),
                    int(s["in_ch"]),
                    int(s["out_ch"]),
                    int(s["height"]),
                    int(s["width"]),
                    int(s["kernel"]),
                    dtype=dt,
                )
            ],
            _conv_runner,
        ),
    ]


# ---------------------------------------------------------------- kernel suites


def _kernel(name: str):
    return lambda s, dt: describe_kernel(name, s, dt)


def _kernel_suites() -> list[Suite]:
    attn_full = tuple(
        {"batch": 1, "heads": h, "seq": n, "head_dim": d, "causal": c}
        for h in (4, 8)
        for n in (128, 256, 512, 1024)
        for d in (64,)
        for c in (0, 1)
    ) + tuple({"batch": 2, "heads": 4, "seq": n, "head_dim": 128, "causal": 1} for n in (256, 768))
    attn_quick = tuple(
        {"batch": 1, "heads": 4, "seq": n, "head_dim": 64, "causal": c}
        for n in (128, 384, 768)
        for c in (0, 1)
    )
    moe_full = tuple(
        {"tokens": t, "hidden": hd, "expert_ffn": f, "experts": e, "top_k": k, "shared_experts": se}
        for t in (64, 256, 1024)
        for (hd, f) in ((256, 512), (512, 1024))
        for (e, k) in ((8, 2), (16, 4))
        for se in (0, 1)
        if not (t == 1024 and hd == 512 and e == 16)
    )
    moe_quick = tuple(
        {
            "tokens": t,
            "hidden": 256,
            "expert_ffn": 512,
            "experts": 8,
            "top_k": 2,
            "shared_experts": se,
        }
        for t in (64, 256, 512)
        for se in (0, 1)
    )
    # CDC's hourglass max-pools 4 times: input sides must be multiples of 16.
    # 15 shapes, so the seeded 35% split holds out 5.
    cdc_full = tuple(
        {"upscale": 4, "batch": 1, "height": h, "width": w}
        for h, w in (
            (16, 16), (16, 32), (16, 48), (16, 64), (32, 16), (32, 32), (32, 48), (32, 64),
            (48, 16), (48, 32), (48, 48), (48, 64), (64, 32), (64, 48), (64, 64),
        )
    )  # fmt: skip
    cdc_quick = tuple(
        {"upscale": 4, "batch": 1, "height": h, "width": w}
        for h, w in ((16, 16), (32, 32), (32, 48))
    )
    return [
        Suite(
            "standard-attention",
            "kernel",
            attn_full,
            attn_quick,
            _kernel("standard-attention"),
            attention_runner(False),
        ),
        Suite(
            "fastattention",
            "kernel",
            attn_full,
            attn_quick,
            _kernel("fastattention"),
            attention_runner(True),
        ),
        Suite("moe", "kernel", moe_full, moe_quick, moe_ops, moe_runner),
        Suite("cdc", "kernel", cdc_full, cdc_quick, _kernel("cdc"), cdc_runner),
    ]


SUITES: dict[str, Suite] = {s.name: s for s in _micro_suites() + _kernel_suites()}
MICRO_SUITES = tuple(n for n, s in SUITES.items() if s.kind == "micro")
KERNEL_SUITES = tuple(n for n, s in SUITES.items() if s.kind == "kernel")

# Suites whose timings measure a mechanism of the CPU path alone, with why: on a GPU or
# NPU they are not run (their fitted kind would describe nothing the device does).
CPU_ONLY: dict[str, str] = {
    "page_fault": "first-touch page faults of glibc's fresh mmap (>= 32 MiB); a GPU "
    "framework's caching allocator reuses device memory and takes no host page faults",
    "exp_masked": "MKL's vexp slow path on -inf inputs (calibrate/exp_micro.py); a GPU's "
    "exp costs the same on any input",
    "upsample_cl": "ATen's channels-last CPU kernel for small nearest upsamplings "
    "(sim/cost/upsample_path.py); a GPU runs one kernel at every size",
}


def suite_shapes(name: str, quick: bool, device: str = "cpu") -> tuple[Shape, ...]:
    """The grid of ``name`` on ``device``: the CPU grids on "cpu", ``gpu_grids`` on a
    GPU or NPU (sized for a device ~100x faster; a suite without one keeps its CPU grid)."""
    suite = SUITES[name]
    if device != "cpu" and name in gpu_grids.GRIDS:
        full, quick_grid = gpu_grids.GRIDS[name]
        return quick_grid if quick else full
    return suite.quick if quick else suite.full


def device_suites(suites: tuple[str, ...] | list[str] | None, device: str) -> list[str]:
    """The suites to run on ``device``: all it can run by default; a suite named that it
    cannot run is an InputError naming the mechanism it measures."""
    if not suites:
        return [n for n in SUITES if device == "cpu" or n not in CPU_ONLY]
    chosen = list(suites)
    if device != "cpu":
        off = [n for n in chosen if n in CPU_ONLY]
        if off:
            why = "; ".join(f"{n}: {CPU_ONLY[n]}" for n in off)
            raise InputError(
                f"--suites {','.join(off)}: CPU-only, not run on --device {device} ({why}); "
                "drop them from --suites"
            )
    return chosen


def split_shapes(suite: str, shapes: tuple[Shape, ...], seed: int) -> list[str]:
    """'fit' / 'heldout' per shape: a seeded permutation holds out ~35% of every suite."""
    n = len(shapes)
    rng = np.random.default_rng([seed, zlib.crc32(suite.encode())])
    order = rng.permutation(n)
    n_held = int(round(HELDOUT_FRACTION * n)) if n >= 3 else 0
    held = set(order[:n_held].tolist())
    return ["heldout" if i in held else "fit" for i in range(n)]


def cases(
    suites: tuple[str, ...] | list[str] | None = None,
    quick: bool = False,
    seed: int = DEFAULT_SEED,
    dtype: str = "fp32",
    device: str = "cpu",
) -> list[Case]:
    """Every case of the chosen suites (all ``device`` runs by default), with its
    fit/held-out label.

    The grid (quick or full, ``suite_shapes``) is split by ``split_shapes``; a kernel
    suite's out-of-range family shapes follow, always held out (in quick mode too: they
    are what tells a model form that carries across shapes from one fitted to the grid).
    """
    out: list[Case] = []
    for name in device_suites(suites, device):
        shapes = suite_shapes(name, quick, device)
        splits = split_shapes(name, shapes, seed)
        labelled = list(zip(shapes, splits, strict=True))
        labelled += [(s, "heldout") for s in OUT_OF_RANGE.get(name, ())]
        for shape, split in labelled:
            out.append(Case(name, tuple((k, float(v)) for k, v in shape.items()), split, dtype))
    return out
