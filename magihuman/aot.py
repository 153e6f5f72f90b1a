"""Ahead-of-time compilation for ZeroGPU Spaces, where `torch.compile` cannot run inside the short-lived GPU
workers: one shared transformer layer (32 of the 40) is exported with a dynamic token count and compiled by
AOTInductor, and that one graph runs every shared layer with its own weights.

On a Space, `build_package` runs in a GPU worker and `apply_package` installs lazy forwards in the main process
(studio/gpu.py); elsewhere `compile_shared_layers` does both. It also runs, and is tested, on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from pathlib import Path

import torch
from torch import nn
from torch._inductor.package import package_aoti

from magihuman.model.dit import DiT, TransformerLayer

MIN_TOKENS, MAX_TOKENS = 64, 2**17
# The weights stay outside the compiled package, so one package serves every shared layer.
PT_GNU_STACK, PF_X = 0x6474E551, 0x1  # ELF program header type of the stack, and its "executable" flag
WEIGHTS_OUTSIDE_PACKAGE = {"aot_inductor.package_constants_in_so": False, "always_keep_tensor_constants": True}


class SharedLayerCall(nn.Module):
    """A shared layer as a tensors-only module, (N, D), (N, R) -> (N, D): with one expert and no window the graph
    depends on the token count alone."""

    def __init__(self, layer: TransformerLayer, backend: str) -> None:
        super().__init__()
        self.layer, self.backend = layer, backend

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        return self.layer(x, (x.shape[0], 0, 0), rope, self.backend, None)


def shared_layers(dit: DiT) -> list[TransformerLayer]:
    c = dit.config
    return [layer for i, layer in enumerate(dit.block.layers) if c.num_experts(i) == 1 and i not in c.local_attn_layers]


def export_shared_layer(dit: DiT, x: torch.Tensor, rope: torch.Tensor) -> torch.export.ExportedProgram:
    tokens = torch.export.Dim("tokens", min=MIN_TOKENS, max=MAX_TOKENS)
    module = SharedLayerCall(shared_layers(dit)[0], dit.attention_backend)
    return torch.export.export(module, (x, rope), dynamic_shapes=({0: tokens}, {0: tokens}))


def package_path(dit: DiT, package_dir: str | Path) -> Path:
    """The package's path: a digest of everything the compiled code depends on, so it is reused only where it
    fits."""
    device = next(dit.parameters()).device
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    layer = shared_layers(dit)[0]
    weights = [(name, str(t.dtype), list(t.shape)) for name, t in layer.state_dict().items()]  # fp8 or bf16
    key = json.dumps([torch.__version__, repr(layer), weights, dit.attention_backend, device.type, capability])
    return Path(package_dir) / f"shared_layer-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt2"


def build_package(dit: DiT, x: torch.Tensor, rope: torch.Tensor, package_dir: str | Path) -> Path:
    """Compile `dit`'s shared layer into a weightless package in `package_dir` (or find it); returns its path.
    The library's executable-stack flag is cleared: glibc 2.41+ refuses to load it."""
    package = package_path(dit, package_dir)
    if package.exists():
        return package
    package.parent.mkdir(parents=True, exist_ok=True)
    program = export_shared_layer(dit, x, rope)
    args, kwargs = program.example_inputs
    options = {**WEIGHTS_OUTSIDE_PACKAGE, "aot_inductor.package": True}
    files = torch._inductor.aot_compile(program.module(), args, kwargs, options=options)
    for file in files:
        if isinstance(file, str) and file.endswith(".so"):
            clear_execstack(Path(file))
    partial = package.with_name(f"{package.stem}.partial-{os.getpid()}.pt2")  # AOTInductor wants the suffix
    package_aoti(str(partial), files)
    os.replace(partial, package)  # complete or absent: a stopped start never leaves half a package
    return package


class LazyCompiledLayer:
    """One shared layer's forward through the package, loaded at the first call in each process (a loaded model
    does not survive a fork) and bound to the layer's current weights without a copy."""

    def __init__(self, package: Path, layer: TransformerLayer, backend: str) -> None:
        self.package, self.backend = str(package), backend
        self._layer = [layer]  # a list: not registered as a submodule of the layer that holds this
        self._graph, self._pid = None, None

    def __call__(self, x, segments, rope, backend, local):
        if self._pid != os.getpid():
            graph = torch._inductor.aoti_load_package(self.package)
            constants = SharedLayerCall(self._layer[0], self.backend).state_dict()
            graph.load_constants(
                {name: constants[name] for name in graph.get_constant_fqns()}, check_full_update=True, user_managed=True
            )
            self._graph, self._pid = graph, os.getpid()
        return self._graph(x, rope)


def apply_package(dit: DiT, package: str | Path) -> None:
    """Give every shared layer of `dit` a lazy compiled forward (`LazyCompiledLayer`); loads nothing now."""
    for layer in shared_layers(dit):
        layer.forward = LazyCompiledLayer(Path(package), layer, dit.attention_backend)


def compile_shared_layers(dit: DiT, x: torch.Tensor, rope: torch.Tensor, package_dir: str | Path) -> float:
    """`build_package` then `apply_package`, in one process (a dedicated GPU, the CPU tests); returns seconds."""
    start = time.perf_counter()
    apply_package(dit, build_package(dit, x, rope, package_dir))
    return time.perf_counter() - start


def clear_execstack(library: Path) -> bool:
    """Clear the executable-stack flag (PF_X of the PT_GNU_STACK program header) of a 64-bit little-endian
    ELF file in place; returns whether it was set."""
    with library.open("r+b") as file:
        header = file.read(64)
        if header[:6] != b"\x7fELF\x02\x01":
            raise ValueError(f"{library} is not a 64-bit little-endian ELF file")
        table, entry_size, count = struct.unpack_from("<Q", header, 32)[0], *struct.unpack_from("<HH", header, 54)
        for index in range(count):
            file.seek(table + index * entry_size)
            kind, flags = struct.unpack("<II", file.read(8))
            if kind == PT_GNU_STACK:
                if not flags & PF_X:
                    return False
                file.seek(table + index * entry_size + 4)
                file.write(struct.pack("<I", flags & ~PF_X))
                return True
    return False


def example_inputs(dit: DiT, tokens: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(dit.parameters()).device
    c = dit.config
    return (
        torch.randn(tokens, c.hidden_size, device=device),
        torch.randn(tokens, c.rope_rotary_dims, device=device).clamp(-1, 1),
    )
