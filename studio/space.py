"""Running on a Hugging Face Space: ZeroGPU detection, the memory plan and the GPU size, the time budget of a GPU
call and the visitor's quota, and fetching the weights into a fresh Space.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gradio as gr
import torch
from spaces.config import Config

from magihuman.build import DEFAULT_DITS
from magihuman.config import DEFAULT_SECONDS, FPS, MIN_SECONDS, REQUEST_LIMITS, RESOLUTIONS, SAMPLING
from magihuman.engine import Engine, GenerationRequest
from magihuman.memory import GB, TEXT_ENCODER_BYTES, VAE_BYTES, dit_bytes, plan_fp8
from magihuman.take_plan import MAX_TAKE_SECONDS, TakePlan
from studio.runtime import gpu_seconds

StatusFn = Callable[[str], None]

# --- 1. Where we run ---

ON_ZEROGPU: bool = bool(Config.zero_gpu)  # spaces' own reading of SPACES_ZERO_GPU ("1"/"t"/"true")

# GPU memory of a ZeroGPU call by size (hub docs, Blackwell era: half or all of an RTX Pro 6000; the earlier H200
# slices were 70 / 141 GB, so these are the smaller figures).
ZEROGPU_VRAM = {"large": 48 * GB, "xlarge": 96 * GB}
# Quota charged per requested second: xlarge counts twice; on the Blackwell card a large request is stretched
# by spaces' duration_factor (1.5).
QUOTA_FACTOR = {"large": 1.5, "xlarge": 2.0}


@dataclass(frozen=True)
class ZeroGpuPlan:
    """What the ZeroGPU engine holds and which GPU size it asks for."""

    size: str  # "large" or "xlarge"
    dits: tuple[str, ...]
    fp8: frozenset[str]  # DiTs with fp8 linears
    needed_bytes: int  # estimated peak (memory.peak_bytes: weights + activation headroom)
    weight_bytes: int  # what spaces copies into every fresh worker

    @property
    def vram_bytes(self) -> int:
        return int(ZEROGPU_VRAM[self.size])

    def describe(self) -> str:
        dtype = f"fp8 linears for {', '.join(sorted(self.fp8))}" if self.fp8 else "bf16"
        return (
            f"ZeroGPU {self.size} ({self.vram_bytes / GB:.0f} GB): {' + '.join(self.dits)} in {dtype}, "
            f"≈ {self.needed_bytes / GB:.0f} GB at peak"
        )


def zerogpu_plan(dits: tuple[str, ...] = DEFAULT_DITS) -> ZeroGpuPlan:
    """The smallest ZeroGPU size the full engine fits, with the fewest fp8 DiTs. No offload: it pins CPU memory
    at load, which needs CUDA in the main process."""
    from magihuman.config import dit_presets

    configs = {name: dit_presets("full")[name].dit for name in dits}
    for size, vram in ZEROGPU_VRAM.items():
        plan = plan_fp8(dits, None, "cuda", "full", offload=False, available_bytes=int(vram))
        if plan.needed_bytes <= vram:
            weights = (
                sum(dit_bytes(c, n in plan.quantised) for n, c in configs.items()) + TEXT_ENCODER_BYTES + VAE_BYTES
            )
            return ZeroGpuPlan(size, tuple(dits), plan.quantised, plan.needed_bytes, weights)
    raise RuntimeError(f"{' + '.join(dits)} does not fit a ZeroGPU xlarge call ({ZEROGPU_VRAM['xlarge'] / GB:.0f} GB)")


PLAN: ZeroGpuPlan | None = zerogpu_plan() if ON_ZEROGPU else None
GPU_SIZE: str | None = PLAN.size if PLAN else None  # None off ZeroGPU (spaces ignores it there)


# --- 2. Time budgets (ZeroGPU `duration`) and quotas; a long take split into calls ---

# A fresh worker first copies every packed weight onto its GPU, inside the granted duration.
# Estimate: the packed tensors stream from local disk at ≈ 4 GB/s (not measured on a Space).
TRANSFER_BYTES_PER_S = 4 * GB
# The daily ZeroGPU quota a request must fit (free account: 5 min); a Space owned by PRO users can raise it.
QUOTA_ENV = "MAGIHUMAN_ZEROGPU_QUOTA_S"
DEFAULT_QUOTA_S = 300


class QuotaError(gr.Error):
    """A request that cannot fit a visitor's ZeroGPU quota, refused before a GPU is asked for."""


def gpu_duration(resolution: str, seconds: int, steps: int | None, base_model: str, sr_steps: int) -> int:
    """Seconds of GPU to ask for: the job's estimate (`runtime.gpu_seconds`) plus the start-up weight transfer
    of a fresh worker. Raises QuotaError when the quota this costs (×2 on xlarge) exceeds the daily quota."""
    # Out-of-range values get a budget anyway: the engine's validation in the worker gives the user's message.
    limits = REQUEST_LIMITS
    seconds = min(max(_number(seconds, DEFAULT_SECONDS), MIN_SECONDS), MAX_TAKE_SECONDS)  # a long take: all of it
    steps = min(
        _number(steps, limits.default_steps.get(base_model, SAMPLING.distill_steps)), max(limits.max_steps.values())
    )
    sr_steps = min(_number(sr_steps, SAMPLING.sr_steps), limits.max_sr_steps)
    resolution = resolution if resolution in RESOLUTIONS else "256p"
    job = gpu_seconds(resolution, seconds, steps, base_model, sr_steps)
    if PLAN is None:
        return job
    total = job + int(PLAN.weight_bytes / TRANSFER_BYTES_PER_S)
    _check_quota(total, f"A {seconds}-second {resolution} clip needs about {total} s of ZeroGPU time")
    return total


def _check_quota(total: int, needs: str) -> None:
    """QuotaError when `total` GPU seconds (×2 on xlarge) exceed the daily quota; `needs` opens the message."""
    quota = int(os.environ.get(QUOTA_ENV) or DEFAULT_QUOTA_S)
    factor = QUOTA_FACTOR[PLAN.size]
    if total * factor > quota:
        raise QuotaError(
            f"{needs}, which counts as {total * factor:.0f} s on the {PLAN.size} GPU this model needs: more than "
            f"the {quota} s a day a free account gets. Choose a lower resolution or a shorter clip, or run the "
            f"studio on a dedicated GPU.",
            title="Too long for ZeroGPU",
        )


# A long take's GPU calls ask for at most this: a worker that outruns its duration is killed, a long request
# waits longer for a GPU, and between calls the GPU goes back to the queue (the windows wait on disk).
MAX_CALL_S = 120
# The last call decodes the stored latents of the earlier windows into the mp4 (Turbo VAE at 256p and x264):
# assumed ≤ 0.1 s per second of take on a ZeroGPU card, ×3 for safety (not measured on a Space).
REDECODE_S_PER_S = 0.3


def take_call_seconds(plan: TakePlan, request: GenerationRequest, made: Sequence[int], last: bool) -> int:
    """GPU seconds of a long take's call making the windows `made` (the last one also re-decodes and runs SR)."""
    limits = REQUEST_LIMITS
    steps = request.steps or limits.default_steps.get(request.base_model, SAMPLING.distill_steps)
    frames = sum(plan.windows[i].frames for i in made)
    seconds = math.ceil(frames / FPS)
    total = gpu_seconds("256p", seconds, steps, request.base_model, request.sr_steps)
    if last:
        whole = math.ceil(plan.generated_frames / FPS)
        total += math.ceil(REDECODE_S_PER_S * max(whole - seconds, 0))
        resolution = request.resolution if request.resolution in RESOLUTIONS else "256p"
        total += gpu_seconds(resolution, whole, 0, request.base_model, request.sr_steps) - gpu_seconds(
            "256p", whole, 0, request.base_model, request.sr_steps
        )
    return total + (int(PLAN.weight_bytes / TRANSFER_BYTES_PER_S) if PLAN is not None else 0)


def take_calls(plan: TakePlan, request: GenerationRequest) -> list[int]:
    """Windows per GPU call of a long take, none over MAX_CALL_S: the last call (which also writes the mp4 and
    runs SR) as few as it must hold, the others as many as fit."""
    windows = list(range(len(plan.windows)))
    last = [windows.pop()]
    if take_call_seconds(plan, request, last, True) > MAX_CALL_S:
        raise gr.Error(
            f"Writing this {plan.seconds:.0f}-second take at {request.resolution} does not fit one ZeroGPU call "
            f"of {MAX_CALL_S} s. Make it at 256p (and upscale on a dedicated GPU), or shorter.",
            title="Too long for ZeroGPU",
        )
    while windows and take_call_seconds(plan, request, [windows[-1], *last], True) <= MAX_CALL_S:
        last.insert(0, windows.pop())
    calls: list[list[int]] = []
    for index in windows:
        if calls and take_call_seconds(plan, request, [*calls[-1], index], False) <= MAX_CALL_S:
            calls[-1].append(index)
        else:
            calls.append([index])
    calls.append(last)
    if PLAN is not None:
        total = sum(take_call_seconds(plan, request, c, c is last) for c in calls)
        _check_quota(
            total,
            f"A {plan.seconds:.0f}-second {request.resolution} take needs about {total} s of ZeroGPU time in "
            f"{len(calls)} calls",
        )
    return [len(c) for c in calls]


def _number(value, default: int) -> int:
    try:
        return max(int(value), 1)
    except (TypeError, ValueError, OverflowError):
        return default


# --- 3. Weights on a Space ---


SPACE_TIERS = ("distill", "540p")  # the weights of magihuman.build.DEFAULT_DITS


def with_space_weights(load: Callable[[StatusFn], Engine]) -> Callable[[StatusFn], Engine]:
    """`load`, preceded on a GPU Space by fetching missing weights (a Space starts from its repository alone)
    into $MAGIHUMAN_WEIGHTS; MAGIHUMAN_MODEL=tiny or MAGIHUMAN_DOWNLOAD=0 skip it."""
    env = os.environ
    if not env.get("SPACE_ID") or env.get("MAGIHUMAN_MODEL") == "tiny" or env.get("MAGIHUMAN_DOWNLOAD") == "0":
        return load
    if not torch.cuda.is_available():
        return load

    def load_with_weights(status: StatusFn) -> Engine:
        from magihuman.errors import CheckpointError
        from magihuman.weights import download, resolve_weights, weights_root

        try:
            resolve_weights(None, SPACE_TIERS)
        except CheckpointError:
            status(f"downloading the weights into {weights_root(None)} (first start: about 90 GB)")
            download(SPACE_TIERS, None, progress=False)
        return load(status)

    return load_with_weights
