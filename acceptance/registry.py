"""The checks in the order they run: cheapest and most informative first, the long full-size runs last.

Expected seconds are for one H100/H200 from a cold process (compiles included) and, where a check also runs
there, for a 2-core CPU. The default budget (480 s) covers the first eight; `zerogpu` and `startup` run when
the earlier checks finish early, or on their own with `--only`; so does `long_take`.
"""

from __future__ import annotations

from acceptance.environment import check_environment
from acceptance.full_size import check_fp8_quality, check_pipeline, check_startup
from acceptance.golden import check_golden
from acceptance.kernels import check_compiled, check_flex_window, check_fp8_linear, check_offload
from acceptance.long_take import check_long_take
from acceptance.runner import Check
from acceptance.zerogpu import check_zerogpu

CHECKS: tuple[Check, ...] = (
    Check("environment", "GPU, versions, attention backends, GEMM and copy ceilings", check_environment, 15, 3),
    Check("golden", "golden fixtures through this device's kernels, per attention backend", check_golden, 30, 15),
    Check("fp8_linear", "fp8 scaled_mm linear vs its emulation and vs bf16", check_fp8_linear, 10, 2),
    Check("flex_window", "FlexAttention 1080p window vs the per-frame split", check_flex_window, 45, 3),
    Check(
        "offload",
        "pinned offload round trip and host-to-device rate",
        check_offload,
        20,
        needs_cuda=True,
        cpu_skip_reason="pinned memory is a CUDA feature (the CPU mechanics are in tests/test_optimize.py)",
    ),
    Check(
        "fp8_quality",
        "fp8 vs bf16 at full size: one velocity and an 8-step latent (random weights)",
        check_fp8_quality,
        45,
        needs_cuda=True,
        cpu_skip_reason="the full-size model",
    ),
    Check(
        "compiled",
        "compiled DiT layers and Turbo VAE blocks vs eager, no recompiles",
        check_compiled,
        120,
        needs_cuda=True,
        cpu_skip_reason="compile on a CPU is covered by tests/test_optimize.py",
    ),
    Check(
        "pipeline",
        "full-size 5-second clip, 256p → 540p → 1080p, warm, per stage (random weights)",
        check_pipeline,
        180,
        needs_cuda=True,
        cpu_skip_reason="the full-size model (`python -m magihuman.bench --model tiny` smoke-tests the code path)",
    ),
    Check(
        "zerogpu",
        "ZeroGPU AoT package: builds, matches eager, loads in a fresh process, no executable stack",
        check_zerogpu,
        150,
        needs_cuda=True,
        cpu_skip_reason="the CPU build is covered by tests/test_zerogpu.py",
    ),
    Check(
        "startup",
        "start-up to ready in a fresh process, cold and warm compile cache",
        check_startup,
        150,
        needs_cuda=True,
        cpu_skip_reason="the full-size model",
    ),
    Check(
        "long_take",
        "60-second take window by window at 256p and 540p: real-time factor against the goals (random weights)",
        check_long_take,
        420,
        needs_cuda=True,
        cpu_skip_reason="the full-size model (`python -m magihuman.bench --model tiny --long-take 60` smoke-tests it)",
    ),
)
