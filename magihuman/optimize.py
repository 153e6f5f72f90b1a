"""Speed steps applied to loaded models from outside (the model files stay eager and readable), each behind one
flag shared by the CLI, the app and the benchmark: regional compile, fp8 linears (`magihuman.fp8`), offload
(`magihuman.offload`), the attention backend, warm-start caches, and oneDNN 3-D convolutions on a CPU.

Order: attention, fp8, offload, compile. Quantising needs the bf16 weights on the GPU (fast, freed linear by
linear); offloading then moves the halved fp8 weights; compile is lazy and traces whatever is in place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
import warnings
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch._functorch.config
import torch._inductor.config
from torch import nn

from magihuman.cache import CACHE_DIR_ENV, default_cache_dir
from magihuman.fp8 import fp8_kernel, quantize_fp8_
from magihuman.model.attention import BACKENDS, select_backend
from magihuman.model.dit import DiT
from magihuman.model.turbo_vae import ResnetBlock3d, TurboVAE
from magihuman.offload import offload_

if TYPE_CHECKING:  # engine imports the samplers and media stack; only its types are needed here
    from magihuman.engine import Engine, Models


@dataclass(frozen=True)
class SpeedFlags:
    """Which speed steps to apply. `attention=None` keeps the backend chosen at load (the fastest available)."""

    compile: bool = False
    fp8: bool | None = False  # None: auto (magihuman.memory.plan_fp8), resolved per DiT when an engine loads
    offload: bool = False
    attention: str | None = None
    cache_dir: Path | None = None  # converted weights and compiled kernels; None: nothing cached

    def __post_init__(self) -> None:
        if self.attention is not None and self.attention not in BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention!r}; choose from {', '.join(BACKENDS)}")

    @classmethod
    def default(cls, device: torch.device | str) -> SpeedFlags:
        return cls(compile=torch.device(device).type == "cuda", fp8=None, cache_dir=default_cache_dir())

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: torch.device | str) -> SpeedFlags:
        """Read the flags `add_speed_arguments` added; `--compile` unset means "on CUDA only"."""
        compile_flag = getattr(args, "compile", None)
        cache_dir = getattr(args, "cache_dir", None)
        return cls(
            compile=cls.default(device).compile if compile_flag is None else bool(compile_flag),
            fp8=getattr(args, "fp8", None),
            offload=bool(getattr(args, "offload", False)),
            attention=getattr(args, "attention", None),
            cache_dir=(Path(cache_dir) if cache_dir else default_cache_dir()) if getattr(args, "cache", True) else None,
        )

    @classmethod
    def from_env(cls, device: torch.device | str, environ: Mapping[str, str] | None = None) -> SpeedFlags:
        """The flags from MAGIHUMAN_* variables, for launches without a command line (Spaces)."""
        env = os.environ if environ is None else environ
        default = cls.default(device)
        return cls(
            compile=_env_bool(env, "MAGIHUMAN_COMPILE", default.compile),
            fp8=_env_bool(env, "MAGIHUMAN_FP8", None),
            offload=_env_bool(env, "MAGIHUMAN_OFFLOAD", default.offload),
            attention=env.get("MAGIHUMAN_ATTENTION") or None,
            cache_dir=default_cache_dir(env) if _env_bool(env, "MAGIHUMAN_CACHE", True) else None,
        )

    def describe(self) -> str:
        on = {True: "on", False: "off", None: "auto"}
        return (
            f"compile {on[self.compile]} · fp8 {on[self.fp8]} · offload {on[self.offload]} · "
            f"attention {self.attention or 'auto'} · cache {self.cache_dir or 'off'}"
        )


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speed steps")
    group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="regional torch.compile of the DiT layers and decoder blocks (default: on with CUDA, off on CPU)",
    )
    group.add_argument(
        "--fp8",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="float8 transformer linears, row-wise scaled (default: auto: the DiTs that must shrink to fit the GPU)",
    )
    group.add_argument(
        "--offload", action="store_true", help="keep the text encoder and extra DiTs in CPU memory (24-48 GB cards)"
    )
    group.add_argument("--attention", choices=list(BACKENDS), help="force an attention backend (default: fastest)")
    group.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep converted weights and compiled kernels on disk for fast restarts (default: on)",
    )
    group.add_argument("--cache-dir", help=f"where (default: ${CACHE_DIR_ENV} or ~/.cache/magihuman)")


def _env_bool(env: Mapping[str, str], name: str, default: bool | None) -> bool | None:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"${name} must be 1/0, true/false, yes/no or on/off, not {value!r}")


# Distinct layer graphs share one code object (TransformerLayer.forward), and dynamo's recompile limit counts
# per code object: (sandwich gelu, shared swiglu, sandwich swiglu) x (global, frame-local) = 6 graphs, close to
# the default limit of 8, past which layers silently run eagerly. The decoder's resnet blocks (one code object)
# need one graph per (width, activation, shortcut) and a few more where a size of 1 is specialised.
_RECOMPILE_LIMIT = 64


def compile_dit(model: DiT, *, dynamic: bool = True, exact_casts: bool = True) -> DiT:
    """Compile every `TransformerLayer` of `model` in place ("regional": layers of one structure share a graph,
    so the 40-layer model compiles three to six graphs in seconds, and its state-dict keys stay as they were).

    `dynamic=True`: the token count and segment lengths change with every prompt, clip length and resolution;
    static shapes would recompile for each (~20 s on a CPU), and `mark_dynamic` would still specialise the
    segment ints once. Weights stay static, so matmul shapes stay known. `exact_casts` rounds where eager
    rounds, so compiled and eager agree bit for bit on a CPU.
    """
    _raise_recompile_limit(_RECOMPILE_LIMIT)
    options = {"emulate_precision_casts": True} if exact_casts else None
    for layer in model.block.layers:
        if layer._compiled_call_impl is None:
            layer.compile(dynamic=dynamic, options=options)
    return model


def compile_decoder(vae: TurboVAE) -> TurboVAE:
    """Compile every `ResnetBlock3d` of the Turbo VAE decoder in place (dynamic shapes): eagerly, each norm,
    activation and residual add is about seven passes over the activations; Inductor fuses them into one or
    two around the convolutions, with eager's roundings (bit-identical on a CPU)."""
    _raise_recompile_limit(_RECOMPILE_LIMIT)
    for block in vae.modules():
        if isinstance(block, ResnetBlock3d) and block._compiled_call_impl is None:
            block.compile(dynamic=True, options={"emulate_precision_casts": True})
    return vae


def onednn_conv3d_(module: nn.Module) -> int:
    """Run every fp32 `nn.Conv3d` in `module` through oneDNN; returns how many it switched. PyTorch's generic
    batch-1 kernel is 5-8× slower on the preview decoder (docs/numerics.md, "CPU convolutions")."""
    if not torch.backends.mkldnn.is_available():
        return 0
    switched = 0
    for conv in module.modules():
        if (
            isinstance(conv, nn.Conv3d)
            and conv.weight.dtype == torch.float32
            and conv.weight.device.type == "cpu"
            and not is_onednn_conv3d(conv)
        ):
            conv.forward = _onednn_forward(conv)
            switched += 1
    return switched


def is_onednn_conv3d(conv: nn.Module) -> bool:
    return getattr(conv.forward, "onednn", False)


def _onednn_forward(conv: nn.Conv3d):
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError("onednn_conv3d_ handles numeric zero padding only")

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.mkldnn_convolution(
            x.contiguous(), conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups
        )

    forward.onednn = True
    return forward


def use_compile_cache(cache_dir: str | Path) -> Path:
    """Keep Inductor's and Triton's caches under `cache_dir` (their /tmp defaults do not survive a Space
    restart), so a restart skips code generation. Returns the Inductor folder; the user's variables win."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir) / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(cache_dir) / "triton"))
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def _raise_recompile_limit(limit: int) -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


WARM_UP_PROMPT = "A person looks into the camera and says hello."


def optimize_dit(model: DiT, flags: SpeedFlags, device: torch.device | str, *, offload: bool = False) -> list[str]:
    """Apply the DiT steps of `flags` to one model; returns one short phrase per step applied."""
    device = torch.device(device)
    applied = []
    model.set_attention_backend(select_backend(device, flags.attention))
    if flags.attention is not None:
        applied.append(f"attention {model.attention_backend}")
    if flags.fp8:
        kernel = fp8_kernel(device)
        if kernel == "emulated" and device.type == "cuda":
            warnings.warn("fp8 linears run emulated on this GPU: less memory, but slower than bf16", stacklevel=2)
        quantize_fp8_(model, kernel)
        applied.append(f"fp8 linears ({kernel})")
    if offload:
        offload_(model, device)
        applied.append("offloaded")
    if flags.compile:
        if flags.cache_dir is not None:
            use_compile_cache(flags.cache_dir)
        compile_dit(model)
        applied.append("compiled layers")
    return applied


def apply_speed_flags(
    models: Models, flags: SpeedFlags, device: torch.device | str, fp8: Collection[str] | None = None
) -> list[str]:
    """Apply `flags` to a loaded engine's models in place; returns one status line per step taken. Offload keeps
    the first base model resident: with fp8 the peak is about 34 GB (a 48 GB card)."""
    device = torch.device(device)
    keep = next((name for name in ("distill", "base") if name in models.dits), None)
    if fp8 is None:
        fp8 = list(models.dits) if flags.fp8 else []
    per_dit = {
        name: optimize_dit(dit, replace(flags, fp8=name in fp8), device, offload=flags.offload and name != keep)
        for name, dit in models.dits.items()
    }
    lines = [f"{name}: {', '.join(steps)}" for name, steps in per_dit.items() if steps]
    if flags.offload:
        offload_(models.text.model, device)
        lines.append("text encoder: offloaded")
    if device.type == "cpu" and onednn_conv3d_(models.decoder):
        lines.append("Turbo VAE decoder: oneDNN convolutions")
    if flags.compile:
        compile_decoder(models.decoder)
        lines.append("Turbo VAE decoder: compiled resnet blocks")
    return lines


def warm_up(engine: Engine, resolutions: Iterable[str] | None = None, seconds: int = 1) -> float:
    """One 1-step generation per resolution (default: every one served), so that compiling and allocator growth
    happen now, not in the first request; returns the seconds. Dynamic shapes cover other clip lengths, and
    the CFG base model reuses the distilled one's graphs."""
    from magihuman.engine import GenerationRequest  # engine imports the media stack; keep this module light

    start = time.perf_counter()
    base_model = engine.available_base_models[0]
    for resolution in resolutions if resolutions is not None else engine.available_resolutions:
        request = GenerationRequest(
            prompt=WARM_UP_PROMPT,
            resolution=resolution,
            seconds=seconds,
            seed=0,
            base_model=base_model,
            steps=1,
            sr_steps=1,
        )
        result = engine.generate(request)
        shutil.rmtree(result.take.folder, ignore_errors=True)
    return time.perf_counter() - start
