"""`zerogpu`, the ZeroGPU path on CUDA: the ahead-of-time package of the DiT's shared layer (`magihuman.aot`)
builds, matches eager, loads in a fresh process without compiling again (and matches there too), and its
compiled library does not ask for an executable stack (glibc ≥ 2.41 refuses to load such a library).

`python -m acceptance.zerogpu --package-dir DIR` is the fresh-process half: it prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch

from acceptance.runner import Context, Outcome, child_env
from magihuman.aot import PF_X, PT_GNU_STACK
from magihuman.bench.memory import free_memory

# Inductor fuses the eager layer's bf16 roundings differently: the golden DiT cases' other-kernel tolerance.
AOT_VS_EAGER = 0.02
MODEL_SIZE = "full"  # the model whose shared layer is packaged ("tiny" exercises the same path on a CPU)


def check_zerogpu(ctx: Context) -> Outcome:
    out = ctx.outcome
    package_dir = ctx.work_dir / "aot"
    shutil.rmtree(package_dir, ignore_errors=True)  # "builds" means built by this run
    built = measure_aot(package_dir, ctx.device, MODEL_SIZE)
    out.measured["build s"] = built["seconds"]
    out.require("package built in this process", not built["package existed"])
    out.at_most("AoT vs eager rel_rms", built["rel_rms"], AOT_VS_EAGER)

    packages = sorted(package_dir.glob("*.pt2"))
    out.require("one package written", len(packages) == 1, f"found {[p.name for p in packages]}")
    libraries = shared_libraries(packages[0]) if packages else {}
    out.require("package holds a compiled library", bool(libraries), "no .so in the package")
    flagged = [name for name, data in libraries.items() if executable_stack(data)]
    out.require("no executable-stack flag", not flagged, f"flagged: {flagged}")

    gc.collect()  # this process's copy of the 15B model, before the fresh process builds its own
    free_memory(ctx.device)
    done = subprocess.run(
        [sys.executable, "-m", "acceptance.zerogpu", "--package-dir", str(package_dir)]
        + ["--size", MODEL_SIZE, "--device", str(ctx.device)],
        capture_output=True,
        text=True,
        timeout=max(ctx.seconds_left(), 1),
        env=child_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"fresh process failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    out.measured["fresh process load s"] = fresh["seconds"]
    out.require("fresh process reused the package", fresh["package existed"], "it compiled again")
    out.at_most("fresh process AoT vs eager rel_rms", fresh["rel_rms"], AOT_VS_EAGER)
    out.notes.append("full-size distilled DiT, random weights, 256p 1-second clip; 32 shared layers run the package")
    return out


@torch.no_grad()
def measure_aot(package_dir: Path, device: torch.device, size: str = "full") -> dict:
    """Build (or find) the package for the distilled DiT's shared layer in `package_dir`, run every shared
    layer through it, and compare one forward with eager."""
    from magihuman.aot import compile_shared_layers, example_inputs, package_path
    from magihuman.bench.workload import make_model, sample_inputs
    from magihuman.config import RESOLUTIONS, dit_presets, latent_frames, video_frames
    from magihuman.fp8 import relative_rms
    from magihuman.packing import TokenLayout

    config = dit_presets(size)["distill"].dit
    dit = make_model(config, device, None)  # seeded: the fresh process builds the same weights
    latent_thw = (latent_frames(1), *RESOLUTIONS["256p"].latent_hw())
    layout = TokenLayout(latent_thw, video_frames(1), 77, config.patch_size_thw)
    args = sample_inputs(config, layout, device)
    eager = dit(*args)
    existed = package_path(dit, package_dir).exists()
    start = time.perf_counter()
    compile_shared_layers(dit, *example_inputs(dit), package_dir)
    seconds = time.perf_counter() - start
    compiled = dit(*args)
    worst = max(relative_rms(c, e) for c, e in zip(compiled, eager, strict=True))
    return {"seconds": seconds, "rel_rms": worst, "package existed": existed}


def shared_libraries(package: Path) -> dict[str, bytes]:
    """The compiled libraries (.so) inside a .pt2 archive (a zip), by member name."""
    with zipfile.ZipFile(package) as archive:
        return {name: archive.read(name) for name in archive.namelist() if name.endswith(".so")}


def executable_stack(elf: bytes) -> bool:
    """True when an ELF shared library asks for an executable stack: its PT_GNU_STACK program header has the
    execute flag, or it has no such header (the loader then assumes an executable stack)."""
    if elf[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    is_64 = elf[4] == 2
    order = "<" if elf[5] == 1 else ">"
    if is_64:
        (table,) = struct.unpack_from(order + "Q", elf, 0x20)
        entry_size, entries = struct.unpack_from(order + "HH", elf, 0x36)
        flags_at = 4  # Elf64_Phdr: p_type, p_flags, ...
    else:
        (table,) = struct.unpack_from(order + "I", elf, 0x1C)
        entry_size, entries = struct.unpack_from(order + "HH", elf, 0x2A)
        flags_at = 24  # Elf32_Phdr: p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags
    for i in range(entries):
        header = table + i * entry_size
        (kind,) = struct.unpack_from(order + "I", elf, header)
        if kind == PT_GNU_STACK:
            (flags,) = struct.unpack_from(order + "I", elf, header + flags_at)
            return bool(flags & PF_X)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m acceptance.zerogpu", description=__doc__)
    parser.add_argument("--package-dir", required=True, type=Path)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    print(json.dumps(measure_aot(args.package_dir, torch.device(args.device), args.size)))


if __name__ == "__main__":
    main()
