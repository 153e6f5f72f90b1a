"""Ahead-of-time compilation for ZeroGPU Spaces, where `torch.compile` cannot run inside the short-lived GPU
workers. The repeated block of the DiT (a shared transformer layer: 32 of the 40 layers, with one expert) is
exported once with a dynamic token count, compiled by AOTInductor, and the one compiled graph runs every
shared layer with that layer's own weights. Sandwich and frame-local layers stay eager.

On a ZeroGPU Space run `compile_shared_layers` inside a `spaces.GPU` function at start-up; it uses only
PyTorch's AOTInductor API, so it also runs (and is tested) on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from magihuman.model.dit import DiT, TransformerLayer

MIN_TOKENS, MAX_TOKENS = 64, 2**17
# The weights stay outside the compiled package, so one package serves every shared layer.
WEIGHTS_OUTSIDE_PACKAGE = {"aot_inductor.package_constants_in_so": False, "always_keep_tensor_constants": True}


class SharedLayerCall(nn.Module):
    """A shared layer as a tensors-only module: (residual stream (N, D), RoPE table (N, R)) -> (N, D).

    One expert means the segment lengths are irrelevant, and the backend and the (absent) local window are
    constants, so the exported graph depends on the token count alone.
    """

    def __init__(self, layer: TransformerLayer, backend: str) -> None:
        super().__init__()
        self.layer, self.backend = layer, backend

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        return self.layer(x, (x.shape[0], 0, 0), rope, self.backend, None)


def shared_layers(dit: DiT) -> list[TransformerLayer]:
    c = dit.config
    return [layer for i, layer in enumerate(dit.block.layers) if c.num_experts(i) == 1 and i not in c.local_attn_layers]


def export_shared_layer(dit: DiT, x: torch.Tensor, rope: torch.Tensor) -> torch.export.ExportedProgram:
    """Export the first shared layer on example inputs, with the token dimension symbolic."""
    tokens = torch.export.Dim("tokens", min=MIN_TOKENS, max=MAX_TOKENS)
    module = SharedLayerCall(shared_layers(dit)[0], dit.attention_backend)
    return torch.export.export(module, (x, rope), dynamic_shapes=({0: tokens}, {0: tokens}))


def package_path(dit: DiT, package_dir: str | Path) -> Path:
    """Where the package for `dit`'s shared layer lives in `package_dir`: the name is a digest of everything
    the compiled code depends on (torch version, the layer's modules and weight dtypes and shapes, attention
    backend, device kind and compute capability), so a package is reused only where it fits."""
    device = next(dit.parameters()).device
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    layer = shared_layers(dit)[0]
    weights = [(name, str(t.dtype), list(t.shape)) for name, t in layer.state_dict().items()]  # fp8 or bf16
    key = json.dumps([torch.__version__, repr(layer), weights, dit.attention_backend, device.type, capability])
    return Path(package_dir) / f"shared_layer-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt2"


def compile_shared_layers(dit: DiT, x: torch.Tensor, rope: torch.Tensor, package_dir: str | Path) -> float:
    """AoT-compile the shared layer once and run every shared layer through it; returns the seconds it took.

    `x` (N, D) fp32 and `rope` (N, R) are example inputs of the right dtypes and device (any N in range). The
    package (a .pt2 archive without weights) is kept in `package_dir` (`package_path`): a restart, or another
    DiT of the same configuration, loads it instead of compiling again. Each shared layer loads the package
    and binds its own weights as user-managed constants, so the weights are not copied.
    """
    start = time.perf_counter()
    package = package_path(dit, package_dir)
    if not package.exists():
        package.parent.mkdir(parents=True, exist_ok=True)
        partial = package.with_name(f"{package.stem}.partial-{os.getpid()}.pt2")
        torch._inductor.aoti_compile_and_package(
            export_shared_layer(dit, x, rope), package_path=str(partial), inductor_configs=WEIGHTS_OUTSIDE_PACKAGE
        )
        os.replace(partial, package)  # complete or absent: a stopped start never leaves half a package
    for layer in shared_layers(dit):
        call = SharedLayerCall(layer, dit.attention_backend)
        graph = torch._inductor.aoti_load_package(str(package))
        constants = call.state_dict()
        graph.load_constants(
            {name: constants[name] for name in graph.get_constant_fqns()}, check_full_update=True, user_managed=True
        )
        layer.forward = _compiled_forward(graph)
    return time.perf_counter() - start


def _compiled_forward(graph):
    def forward(x, segments, rope, backend, local):
        return graph(x, rope)

    return forward


def example_inputs(dit: DiT, tokens: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (x, rope) of the shapes and dtypes a shared layer sees, on the model's device."""
    device = next(dit.parameters()).device
    c = dit.config
    return (
        torch.randn(tokens, c.hidden_size, device=device),
        torch.randn(tokens, c.rope_rotary_dims, device=device).clamp(-1, 1),
    )
