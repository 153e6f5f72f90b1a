"""Warm start: converted weights kept on local disk, so that a restart reads less and converts nothing.

The hub's distill and SR checkpoints are fp32 (57 GiB each); the first start converts them and writes the
model's own state dict (28.5 GiB bf16, ~15 GiB with fp8 linears), which later starts read instead. Entries are
keyed by the source files, the configuration and the format, written atomically, skipped when the disk lacks
room, and rebuilt when damaged. The compile cache shares the folder (`optimize.use_compile_cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch

from magihuman.config import DiTConfig
from magihuman.errors import CheckpointError
from magihuman.fp8 import fp8_kernel, quantize_fp8_
from magihuman.loading import INDEX_NAME, SINGLE_NAME, load_dit, load_state_dict_strict, save_checkpoint
from magihuman.model.dit import DiT, build_dit

CACHE_DIR_ENV = "MAGIHUMAN_CACHE_DIR"
FORMAT_VERSION = 1  # bump when the layout of a converted entry changes
COMPLETE_NAME = "converted.json"  # written last: an entry without it is incomplete
SHARD_BYTES = 4 * 2**30
FREE_SPACE_MARGIN = 2 * 2**30  # leave this much free after writing an entry

StatusFn = Callable[[str], None]


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$MAGIHUMAN_CACHE_DIR, else $XDG_CACHE_HOME/magihuman, else ~/.cache/magihuman."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_DIR_ENV):
        return Path(env[CACHE_DIR_ENV]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "magihuman"


# --- 1. Converted weights --------------------------------------------------------------------------------


def source_fingerprint(folder: str | Path) -> list[tuple[str, int, int]]:
    folder = Path(folder)
    names = [INDEX_NAME, SINGLE_NAME, *sorted(p.name for p in folder.glob("*.safetensors"))]
    stats = []
    for name in dict.fromkeys(names):
        path = folder / name
        if path.exists():
            stat = path.stat()
            stats.append((name, stat.st_size, stat.st_mtime_ns))
    return stats


def converted_entry(cache_dir: str | Path, source: str | Path, config: DiTConfig, fp8: bool) -> Path:
    """The cache folder for `source` converted to the model's dtypes (`fp8`: with fp8 transformer linears)."""
    source = Path(source)
    key = json.dumps(
        {"version": FORMAT_VERSION, "source": source_fingerprint(source), "config": asdict(config), "fp8": fp8},
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / "converted" / f"{source.name}-{_format(fp8)}-{digest}"


def load_dit_cached(
    source: str | Path,
    config: DiTConfig,
    device: torch.device | str,
    *,
    fp8: bool,
    cache_dir: str | Path | None,
    status: StatusFn | None = None,
) -> DiT:
    """`load_dit` through the cache in `cache_dir` (None: no cache), with fp8 linears if `fp8`. A damaged entry is
    never an error: it is rebuilt."""
    status = status or (lambda line: None)
    device = torch.device(device)
    if cache_dir is None:
        return _convert(load_dit(source, config, device), fp8, device)
    entry = converted_entry(cache_dir, source, config, fp8)
    if (entry / COMPLETE_NAME).exists():
        model = build_dit(config, "meta")
        if fp8:
            quantize_fp8_(model, fp8_kernel(device))  # on meta: just the fp8 module structure
        try:
            load_state_dict_strict(model, entry, device)
        except CheckpointError as exc:
            status(f"converted copy {entry} is damaged ({exc}); converting {source} again")
            shutil.rmtree(entry, ignore_errors=True)
        else:
            status(f"read the converted {_format(fp8)} copy {entry}")
            return model.eval().requires_grad_(False)
    model = _convert(load_dit(source, config, device), fp8, device)
    write_converted(model, entry, status)
    return model


def _convert(model: DiT, fp8: bool, device: torch.device) -> DiT:
    return quantize_fp8_(model, fp8_kernel(device)) if fp8 else model


def _format(fp8: bool) -> str:
    return "fp8" if fp8 else "bf16"


def write_converted(model: DiT, entry: Path, status: StatusFn) -> bool:
    """Write `model`'s state dict as cache entry `entry` (atomically); False when skipped for lack of room."""
    state = model.state_dict()
    needed = sum(t.numel() * t.element_size() for t in state.values())
    entry.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(entry.parent).free
    if free < needed + FREE_SPACE_MARGIN:
        status(
            f"not caching the converted weights: {needed / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free "
            f"in {entry.parent} (set {CACHE_DIR_ENV} to a larger disk, or --no-cache)"
        )
        return False
    partial = entry.with_name(f"{entry.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    start = time.perf_counter()
    try:
        save_checkpoint(state, partial, max_shard_bytes=SHARD_BYTES)
        (partial / COMPLETE_NAME).write_text(json.dumps({"bytes": needed, "written": time.time()}))
        for stale in entry.parent.glob(entry.name.rsplit("-", 1)[0] + "-*"):
            if stale != partial and ".partial-" not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)
        os.replace(partial, entry)
    except OSError as exc:  # a full disk or a read-only folder must not stop the model from serving
        shutil.rmtree(partial, ignore_errors=True)
        status(f"not caching the converted weights: cannot write {entry} ({exc})")
        return False
    status(f"cached the converted weights in {entry} ({needed / 2**30:.1f} GiB, {time.perf_counter() - start:.0f} s)")
    return True
