"""Ahead-of-time compilation for ZeroGPU Spaces, where `torch.compile` cannot run inside the short-lived GPU
workers. The repeated block of the DiT (a shared transformer layer: 32 of the 40 layers, with one expert) is
exported once with a dynamic token count, compiled by AOTInductor, and the one compiled graph runs every
shared layer with that layer's own weights. Sandwich and frame-local layers stay eager.

On a ZeroGPU Space run `compile_shared_layers` inside a `spaces.GPU` function at start-up; it uses only
PyTorch's AOTInductor API, so it also runs (and is tested) on the CPU.
"""

from __future__ import annotations

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


def compile_shared_layers(dit: DiT, x: torch.Tensor, rope: torch.Tensor, package_dir: str | Path) -> float:
    """AoT-compile the shared layer once and run every shared layer through it; returns the seconds it took.

    `x` (N, D) fp32 and `rope` (N, R) are example inputs of the right dtypes and device (any N in range). The
    package (a .pt2 archive without weights) is written to `package_dir`; each shared layer loads it and binds
    its own weights as user-managed constants, so the weights are not copied.
    """
    start = time.perf_counter()
    package = Path(package_dir) / "shared_layer.pt2"
    package.parent.mkdir(parents=True, exist_ok=True)
    torch._inductor.aoti_compile_and_package(
        export_shared_layer(dit, x, rope), package_path=str(package), inductor_configs=WEIGHTS_OUTSIDE_PACKAGE
    )
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
