"""Where every weight file comes from, which tiers need which, and how they get onto the disk.

Each of the four Hugging Face repositories is mirrored, in its own layout (so `huggingface-cli download` copies
work too), under one weights directory:

    weights/daVinci-MagiHuman/{distill,base,540p_sr,1080p_sr,turbo_vae}/
    weights/t5gemma-9b-9b-ul2/                  config, tokenizer, 9 shards + index
    weights/Wan2.2-TI2V-5B-Diffusers/vae/       diffusers AutoencoderKLWan
    weights/stable-audio-open-1.0/vae/          diffusers AutoencoderOobleck

Only the presence of files is checked here; strict key and shape checks happen in `magihuman.loading`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from magihuman.config import RESOLUTIONS, dit_presets
from magihuman.errors import CheckpointError, DownloadError
from magihuman.loading import INDEX_NAME, SINGLE_NAME

Gate = Literal["none", "auto", "manual"]

WEIGHTS_ENV = "MAGIHUMAN_WEIGHTS"
DEFAULT_WEIGHTS_DIR = Path("weights")
TURBO_VAE_CONFIG = "TurboV3-Wan22-TinyShallow_7_7.json"
TURBO_VAE_CHECKPOINT = "checkpoint-340000.ckpt"
DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"

# --- 1. Sources: repositories and the components taken from them -----------------------------------------


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    gate: Gate  # auto: accepting the licence grants access at once; manual: the authors review each request
    folder: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


MAGIHUMAN_REPO = HubRepo("GAIR/daVinci-MagiHuman", "none", "daVinci-MagiHuman")
T5GEMMA_REPO = HubRepo("google/t5gemma-9b-9b-ul2", "manual", "t5gemma-9b-9b-ul2")
WAN_VAE_REPO = HubRepo("Wan-AI/Wan2.2-TI2V-5B-Diffusers", "none", "Wan2.2-TI2V-5B-Diffusers")
STABLE_AUDIO_REPO = HubRepo("stabilityai/stable-audio-open-1.0", "auto", "stable-audio-open-1.0")

# A component's required files, each a group of alternatives: any one of them satisfies the group.
Requirement = tuple[str, ...]
SAFETENSORS: Requirement = (INDEX_NAME, SINGLE_NAME)  # an index (whose shards are then checked) or one file


@dataclass(frozen=True)
class Component:
    name: str
    description: str
    repo: HubRepo
    subdir: str  # inside the repository; "" for its root
    patterns: tuple[str, ...]  # allow-patterns relative to `subdir` (fnmatch; `*` also matches `/`)
    required: tuple[Requirement, ...]  # relative to `subdir`
    approx_gib: float  # download size (third-party figures), or inferred

    @property
    def hub_patterns(self) -> tuple[str, ...]:
        return tuple(f"{self.subdir}/{p}" if self.subdir else p for p in self.patterns)

    def local_path(self, weights_dir: Path) -> Path:
        return weights_dir / self.repo.folder / self.subdir


DIT_NAMES = tuple(dit_presets("full"))


def _dit(name: str, description: str, approx_gib: float) -> Component:
    subdir = dit_presets("full")[name].subfolder
    return Component(name, description, MAGIHUMAN_REPO, subdir, ("*.json", "*.safetensors"), (SAFETENSORS,), approx_gib)


def _diffusers_vae(name: str, description: str, repo: HubRepo, approx_gib: float) -> Component:
    files = (DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS)
    return Component(name, description, repo, "vae", files, tuple((f,) for f in files), approx_gib)


# Registry order is the order of tables and downloads. Names of DiT components are the presets' names.
COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        _dit("distill", "distilled DiT (8 steps, no CFG)", 56.99),  # 13 fp32 shards
        _dit("base", "base DiT (32 steps with CFG)", 28.54),  # 7 bf16 shards
        _dit("sr-540p", "540p super-resolution DiT", 56.99),
        _dit("sr-1080p", "1080p super-resolution DiT", 56.99),
        Component(
            "turbo-vae",
            "Turbo VAE video decoder",
            MAGIHUMAN_REPO,
            "turbo_vae",
            (TURBO_VAE_CONFIG, TURBO_VAE_CHECKPOINT),
            ((TURBO_VAE_CONFIG,), (TURBO_VAE_CHECKPOINT,)),
            1.74,
        ),
        Component(
            "text-encoder",
            "T5Gemma text encoder (encoder + decoder shards; only the encoder is loaded)",
            T5GEMMA_REPO,
            "",
            ("*.json", "*.safetensors", "tokenizer*"),
            (("config.json",), ("tokenizer_config.json",), ("tokenizer.json", "tokenizer.model"), SAFETENSORS),
            37.91,
        ),
        # 704.7 M fp32 parameters ≈ 2.6 GiB [inferred]; it encodes the portrait.
        _diffusers_vae("video-vae", "Wan2.2 VAE (diffusers; encodes the portrait)", WAN_VAE_REPO, 2.6),
        # 156.1 M fp32 parameters ≈ 0.58 GiB [inferred].
        _diffusers_vae("audio-vae", "Stable Audio Open VAE (diffusers Oobleck)", STABLE_AUDIO_REPO, 0.58),
    )
}

# --- 2. Tiers: which components each one needs -----------------------------------------------------------

SHARED_COMPONENTS = ("text-encoder", "video-vae", "audio-vae", "turbo-vae")
STAGE1_TIERS = ("distill", "base")  # named after the DiT that makes the base clip
SR_TIERS = {name: res.sr_model for name, res in RESOLUTIONS.items() if res.sr_model is not None}
TIERS: dict[str, tuple[str, ...]] = {
    **{tier: (tier, *SHARED_COMPONENTS) for tier in STAGE1_TIERS},
    **{tier: (sr_model, *SHARED_COMPONENTS) for tier, sr_model in SR_TIERS.items()},
}
DEFAULT_TIERS = ("distill",)


def parse_tiers(tiers: str | Iterable[str]) -> tuple[str, ...]:
    names = tiers.split(",") if isinstance(tiers, str) else list(tiers)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in TIERS]
    if unknown or not names:
        problem = f"unknown tiers {', '.join(unknown)}" if unknown else "no tiers given"
        raise ValueError(f"{problem}; choose from {', '.join(TIERS)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Plan:
    tiers: tuple[str, ...]
    components: tuple[Component, ...]

    @property
    def approx_gib(self) -> float:
        return sum(c.approx_gib for c in self.components)

    def repo_patterns(self) -> dict[HubRepo, list[str]]:
        """One entry per repository (one download each), with the patterns of its components merged."""
        merged: dict[HubRepo, list[str]] = {}
        for component in self.components:
            merged.setdefault(component.repo, []).extend(component.hub_patterns)
        return {repo: list(dict.fromkeys(patterns)) for repo, patterns in merged.items()}

    def table(self) -> str:
        rows = ["| component | repository | gate | ≈ GiB |", "|---|---|---|---:|"]
        for c in self.components:
            where = f"{c.repo.repo_id}/{c.subdir}" if c.subdir else c.repo.repo_id
            rows.append(f"| {c.name}: {c.description} | `{where}` | {c.repo.gate} | {c.approx_gib:.2f} |")
        rows.append(f"| **total (approximate)** | | | **{self.approx_gib:.2f}** |")
        return "\n".join(rows)


def plan_for(tiers: str | Iterable[str] = DEFAULT_TIERS) -> Plan:
    """The components `tiers` need. SR tiers upscale a clip made by a stage-1 model, so a set of SR tiers
    alone also gets the default one (distill)."""
    tiers = parse_tiers(tiers)
    needed = {name for tier in tiers for name in TIERS[tier]}
    if not any(tier in STAGE1_TIERS for tier in tiers):
        needed.update(TIERS[DEFAULT_TIERS[0]])
    return Plan(tiers, tuple(c for c in COMPONENTS.values() if c.name in needed))


# --- 3. Local folders: where things are and whether they are complete ------------------------------------


@dataclass(frozen=True)
class WeightPaths:
    root: Path
    tiers: tuple[str, ...]
    dits: dict[str, Path]  # DiT preset name -> folder with an index + shards or one model.safetensors
    turbo_vae_config: Path
    turbo_vae_checkpoint: Path
    text_encoder: Path  # a transformers model folder (config, tokenizer, shards)
    video_vae: Path  # a diffusers model folder (config.json + diffusion_pytorch_model.safetensors)
    audio_vae: Path

    def dit(self, name: str) -> Path:
        if name not in self.dits:
            raise CheckpointError(
                f"the {name} DiT was not among the tiers asked for ({', '.join(self.tiers)}); "
                f"available: {', '.join(self.dits)}"
            )
        return self.dits[name]


def weights_root(weights_dir: str | Path | None = None) -> Path:
    if weights_dir is not None:
        return Path(weights_dir)
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR)


def download_command(tiers: Iterable[str], weights_dir: Path) -> str:
    return f"python -m magihuman download --tiers {','.join(tiers)} --weights-dir {weights_dir}"


def _index_shards(index: Path) -> list[str]:
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index} is not a valid safetensors index ({exc})") from exc


def _first_missing(component: Component, weights_dir: Path) -> str | None:
    """Describe the first required file (or the folder itself) that is absent, or None when complete."""
    folder = component.local_path(weights_dir)
    if not folder.is_dir():
        return f"folder {folder}"
    for alternatives in component.required:
        found = next((folder / name for name in alternatives if (folder / name).is_file()), None)
        if found is None:
            others = f" (or {', '.join(alternatives[1:])})" if len(alternatives) > 1 else ""
            return f"{folder / alternatives[0]}{others}"
        if found.name == INDEX_NAME:
            for shard in _index_shards(found):
                if not (folder / shard).is_file():
                    return f"shard {folder / shard} (listed in {found})"
    return None


def _paths(weights_dir: Path, plan: Plan) -> WeightPaths:
    def where(name: str) -> Path:
        return COMPONENTS[name].local_path(weights_dir)

    turbo = where("turbo-vae")
    return WeightPaths(
        root=weights_dir,
        tiers=plan.tiers,
        dits={c.name: c.local_path(weights_dir) for c in plan.components if c.name in DIT_NAMES},
        turbo_vae_config=turbo / TURBO_VAE_CONFIG,
        turbo_vae_checkpoint=turbo / TURBO_VAE_CHECKPOINT,
        text_encoder=where("text-encoder"),
        video_vae=where("video-vae"),
        audio_vae=where("audio-vae"),
    )


def resolve_weights(weights_dir: str | Path | None = None, tiers: str | Iterable[str] = DEFAULT_TIERS) -> WeightPaths:
    """Use weights already on disk (nothing is downloaded); `CheckpointError` names the first missing path."""
    root, plan = weights_root(weights_dir), plan_for(tiers)
    for component in plan.components:
        missing = _first_missing(component, root)
        if missing is not None:
            raise CheckpointError(
                f"{missing} is missing: it belongs to the {component.description} ({component.name}), "
                f"needed by tiers {','.join(plan.tiers)}. Download it with `{download_command(plan.tiers, root)}`, "
                f"or point --weights-dir (or ${WEIGHTS_ENV}) at a folder holding "
                f"{component.repo.folder}/ laid out like {component.repo.url}"
            )
    return _paths(root, plan)


# --- 4. Downloading --------------------------------------------------------------------------------------


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    silence = not enabled and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        yield
    finally:
        if silence:
            enable_progress_bars()


def _no_hub_message(repo: HubRepo, plan: Plan, root: Path, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    reason = (
        "HF_HUB_OFFLINE is set" if offline else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    )
    return (
        f"no access to the Hugging Face Hub while fetching {repo.repo_id} ({reason}). "
        f"Run `{download_command(plan.tiers, root)}` on a machine that has access and copy the folder here, "
        f"then pass --weights-dir DIR (or set {WEIGHTS_ENV}=DIR) pointing at it; "
        f"DIR must hold {', '.join(sorted({c.repo.folder + '/' for c in plan.components}))}"
    )


def _gate_message(repo: HubRepo) -> str:
    how = (
        "request access there (the authors review requests by hand, which can take a while)"
        if repo.gate == "manual"
        else "accept its terms there (access is granted at once)"
    )
    return (
        f"{repo.repo_id} is gated: log in at {repo.url}, {how}, then create a read token at "
        "https://huggingface.co/settings/tokens and set HF_TOKEN=<token> (or pass --token)"
    )


def download(
    tiers: str | Iterable[str] = DEFAULT_TIERS,
    weights_dir: str | Path | None = None,
    token: str | None = None,
    progress: bool = True,
    fetch: Callable[..., str] = snapshot_download,
) -> WeightPaths:
    """Fetch what `tiers` need, one snapshot_download per repository (files already there are kept). Every
    failure is a `DownloadError` saying what to do."""
    root, plan = weights_root(weights_dir), plan_for(tiers)
    token = token or os.environ.get("HF_TOKEN")
    with _progress_bars(progress):
        for repo, patterns in plan.repo_patterns().items():
            local_dir = root / repo.folder
            if progress:
                print(f"fetching {repo.repo_id} ({', '.join(patterns)}) into {local_dir}", flush=True)
            try:
                fetch(repo.repo_id, allow_patterns=patterns, local_dir=local_dir, token=token)
            # GatedRepoError is a RepositoryNotFoundError, and both are HfHubHTTPErrors: most specific first.
            except GatedRepoError as exc:
                raise DownloadError(_gate_message(repo)) from exc
            except RepositoryNotFoundError as exc:
                raise DownloadError(
                    f"{repo.repo_id} was not found on the hub (renamed, removed or private?); see {repo.url}"
                ) from exc
            except RevisionNotFoundError as exc:
                raise DownloadError(f"{repo.repo_id} has no revision `main` any more; see {repo.url}") from exc
            except HfHubHTTPError as exc:
                if exc.response.status_code == 401:
                    raise DownloadError(
                        f"the hub refused the token for {repo.repo_id} (HTTP 401): check HF_TOKEN or --token"
                    ) from exc
                raise DownloadError(_no_hub_message(repo, plan, root, exc)) from exc
            except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
                raise DownloadError(_no_hub_message(repo, plan, root, exc)) from exc
            for component in plan.components:
                missing = _first_missing(component, root) if component.repo == repo else None
                if missing is not None:
                    raise DownloadError(
                        f"{missing} is missing after downloading {repo.repo_id}: the download was interrupted "
                        f"(run it again) or the repository's layout changed (compare with {repo.url}/tree/main)"
                    )
    return _paths(root, plan)


def add_download_arguments(parser: argparse.ArgumentParser) -> None:

    def tiers_argument(text: str) -> tuple[str, ...]:
        try:
            return parse_tiers(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parser.add_argument(
        "--tiers",
        type=tiers_argument,
        default=DEFAULT_TIERS,
        help=f"comma-separated, from {', '.join(TIERS)} (default: {','.join(DEFAULT_TIERS)})",
    )
    parser.add_argument(
        "--weights-dir", type=Path, help=f"where the weights go (default: ${WEIGHTS_ENV} or ./{DEFAULT_WEIGHTS_DIR})"
    )
    parser.add_argument("--token", help="Hugging Face token for gated repositories (default: $HF_TOKEN or your login)")


def run_download(args: argparse.Namespace) -> WeightPaths:
    root, plan = weights_root(args.weights_dir), plan_for(args.tiers)
    print(f"tiers {','.join(plan.tiers)} need (sizes are approximate):\n\n{plan.table()}\n")
    for repo in dict.fromkeys(c.repo for c in plan.components if c.repo.gate != "none"):
        print(f"note: {repo.repo_id} is gated ({repo.gate}): accept its terms at {repo.url} and set HF_TOKEN")
    paths = download(plan.tiers, root, token=args.token)
    print(f"done: weights for {','.join(plan.tiers)} are in {root}")
    return paths
