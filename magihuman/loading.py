"""Strict loading of the checkpoints in their official layouts, with one mismatch report (`check_keys`) that
the VAE and text-encoder loaders share.

Models are built on meta and every tensor is read memory-mapped onto the target device in the module's dtype,
so the 15B model is never materialised twice. Unlike the reference loader nothing is optional: any mismatch or
damaged shard is a `CheckpointError` naming the key and the file.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from magihuman.config import DiTConfig, TurboVAEConfig
from magihuman.errors import CheckpointError
from magihuman.model.dit import DiT, build_dit
from magihuman.model.turbo_vae import TurboVAE, check_supported

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def checkpoint_files(folder: str | Path) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    index = folder / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index ({exc})") from exc
        files = {key: folder / name for key, name in weight_map.items()}
        for path in sorted(set(files.values())):
            if not path.exists():
                hint = (
                    " (a zstd-compressed copy exists: decompress it with `zstd -d`)"
                    if path.with_name(path.name + ".zst").exists()
                    else ""
                )
                raise CheckpointError(f"shard {path} named in {index} is missing{hint}")
        return files
    single = folder / SINGLE_NAME
    if single.exists():
        return {key: single for key in _keys_of(single)}
    raise CheckpointError(f"{folder} holds neither {INDEX_NAME} nor {SINGLE_NAME}")


def _keys_of(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"cannot read {path}: truncated or not a safetensors file ({exc})") from exc


def load_state_dict_strict(
    model: nn.Module,
    folder: str | Path,
    device: torch.device | str = "cpu",
    on_tensor: Callable[[int, int], None] | None = None,
) -> None:
    """Fill every parameter and buffer of `model` from the checkpoint in `folder`; checks before touching it."""
    files = checkpoint_files(folder)
    expected = model.state_dict()
    unexpected = [f"{key} (in {files[key].name})" for key in set(files) - set(expected)]
    check_keys(f"checkpoint in {folder}", type(model).__name__, set(expected) - set(files), unexpected)

    by_file: dict[Path, list[str]] = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    loaded: dict[str, torch.Tensor] = {}
    done, total = 0, len(files)
    for path, keys in sorted(by_file.items()):
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                present = set(f.keys())
                for key in keys:
                    if key not in present:
                        raise CheckpointError(f"{path} does not hold {key}, although the index says it does")
                    want = expected[key]
                    shape = tuple(f.get_slice(key).get_shape())
                    if shape != tuple(want.shape):
                        raise CheckpointError(
                            f"{key} in {path} has shape {list(shape)}, the model expects {list(want.shape)}"
                        )
                    loaded[key] = f.get_tensor(key).to(dtype=want.dtype)
                    done += 1
                    if on_tensor is not None:
                        on_tensor(done, total)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"cannot read {path}: truncated or corrupt ({exc})") from exc
    model.load_state_dict(loaded, strict=True, assign=True)


class ModelWrapper:
    """A loaded model behind a small interface (`self.model`): its device and dtype are the model's."""

    model: nn.Module

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype


def check_keys(
    source: str,
    model: str,
    missing: Iterable[str] = (),
    unexpected: Iterable[str] = (),
    wrongly_shaped: Iterable[str] = (),
) -> None:
    """The one report of a strict load: raise `CheckpointError` when any key is missing, unexpected or wrongly
    shaped, naming `source` (the file or folder read), `model` and up to five keys of each kind."""
    problems = []
    for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", wrongly_shaped)):
        keys = sorted(keys)
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{kind} {len(keys)} key(s): {', '.join(keys[:5])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not match the {model}; " + "; ".join(problems))


def load_dit(
    folder: str | Path,
    config: DiTConfig,
    device: torch.device | str = "cpu",
    on_tensor: Callable[[int, int], None] | None = None,
) -> DiT:
    model = build_dit(config, device="meta")
    load_state_dict_strict(model, folder, device, on_tensor)
    return model.eval().requires_grad_(False)


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor], folder: str | Path, max_shard_bytes: int | None = None
) -> Path:
    """Write `state_dict` in the official layout, copied to the CPU one shard at a time (host memory for one
    shard, not the model)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if max_shard_bytes is None:
        save_file(_on_cpu(state_dict), str(folder / SINGLE_NAME))
        return folder
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = total = 0
    for key, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
        total += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(_on_cpu(shard), str(folder / name))
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return folder


def _on_cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


# --- The Turbo VAE decoder: the official .ckpt -----------------------------------------------------------

EMA_KEY = "ema_state_dict"


def turbo_vae_from_state_dict(
    config: TurboVAEConfig,
    state: dict[str, torch.Tensor],
    source: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> TurboVAE:
    with torch.device("meta"):
        model = TurboVAE(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    wrong = [
        f"{name} {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__} (expected {expected[name]})"
        for name, t in sorted(state.items())
        if name in expected and (not isinstance(t, torch.Tensor) or tuple(t.shape) != expected[name])
    ]
    check_keys(source, "Turbo VAE decoder", missing, unexpected, wrong)
    weights = {name: t.to(device=device, dtype=dtype) for name, t in state.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def read_decoder_state(ckpt_path: str | Path) -> dict[str, torch.Tensor]:
    """The `decoder.*` EMA entries of an official `.ckpt`, without training-only ones."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: Turbo VAE checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path}: cannot read the Turbo VAE checkpoint (truncated or corrupt?): {err}") from err
    if not isinstance(data, dict) or EMA_KEY not in data:
        raise CheckpointError(f"{path}: no {EMA_KEY!r} entry; not an official Turbo VAE checkpoint")
    state = {name.removeprefix("module."): t for name, t in data[EMA_KEY].items()}
    return {name: t for name, t in state.items() if name.startswith("decoder.")}


def load_turbo_vae(
    config_path: str | Path,
    ckpt_path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> TurboVAE:
    """Load the official layout: the JSON config (e.g. TurboV3-Wan22-TinyShallow_7_7.json) and the `.ckpt`."""
    config_path = Path(config_path)
    try:
        config = TurboVAEConfig.from_dict(json.loads(config_path.read_text()))
        check_supported(config)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"{config_path}: unusable Turbo VAE config: {err}") from err
    return turbo_vae_from_state_dict(config, read_decoder_state(ckpt_path), str(ckpt_path), device, dtype)
