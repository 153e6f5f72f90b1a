"""Weight sources, tiers, download and the local-folder override, offline against a fake hub on disk.

`FakeHub` stands in for `snapshot_download`: it copies from a folder laid out like the four hub repositories,
choosing files with huggingface_hub's own pattern filter, and raises huggingface_hub's real errors.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    Response,
)
from huggingface_hub.utils import filter_repo_objects

from magihuman import weights
from magihuman.errors import CheckpointError, DownloadError
from magihuman.weights import (
    COMPONENTS,
    DIFFUSERS_WEIGHTS,
    INDEX_NAME,
    TURBO_VAE_CHECKPOINT,
    TURBO_VAE_CONFIG,
    add_download_arguments,
    download,
    parse_tiers,
    plan_for,
    resolve_weights,
    run_download,
)

MAGI, T5, WAN, SAO = (
    "GAIR/daVinci-MagiHuman",
    "google/t5gemma-9b-9b-ul2",
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
    "stabilityai/stable-audio-open-1.0",
)
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
DIT_FOLDERS = ("base", "distill", "540p_sr", "1080p_sr")


def _write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _sharded(folder: Path) -> None:
    """An index listing two shards, and the shards."""
    _write(
        folder / INDEX_NAME, json.dumps({"metadata": {}, "weight_map": {"a.weight": SHARDS[0], "b.weight": SHARDS[1]}})
    )
    for shard in SHARDS:
        _write(folder / shard)


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    """Tiny stand-ins for the four repositories, including files the patterns must leave behind."""
    root = tmp_path / "hub"
    for sub in DIT_FOLDERS:
        _sharded(root / MAGI / sub)
    _write(root / MAGI / "turbo_vae" / TURBO_VAE_CONFIG, "{}")
    _write(root / MAGI / "turbo_vae" / TURBO_VAE_CHECKPOINT)
    _write(root / MAGI / "README.md")
    _sharded(root / T5)
    for name in ("config.json", "tokenizer_config.json", "tokenizer.model", "tokenizer.json", "README.md"):
        _write(root / T5 / name)
    for repo in (WAN, SAO):
        _write(root / repo / "vae" / "config.json", "{}")
        _write(root / repo / "vae" / DIFFUSERS_WEIGHTS)
    _write(root / WAN / "model_index.json", "{}")
    _write(root / WAN / "transformer" / DIFFUSERS_WEIGHTS)
    _write(root / SAO / "model_config.json", "{}")
    _write(root / SAO / "model.safetensors")
    return root


def _response(status: int, url: str) -> Response:
    # huggingface_hub's HTTP errors wrap a response of the HTTP library it was built on, and read its request:
    # take both classes from that library so the test follows whichever version is installed.
    request_class = sys.modules[Response.__module__].Request
    return Response(status, request=request_class("GET", url))


class FakeHub:
    """Behaves like `snapshot_download(repo_id, allow_patterns=..., local_dir=..., token=...)` on a local folder."""

    def __init__(self, root: Path, gated: tuple[str, ...] = (), missing: tuple[str, ...] = ()) -> None:
        self.root, self.gated, self.missing = root, gated, missing
        self.calls: list[tuple[str, tuple[str, ...], Path, str | None]] = []

    def __call__(self, repo_id: str, *, allow_patterns: list[str], local_dir: Path, token: str | None) -> str:
        self.calls.append((repo_id, tuple(allow_patterns), Path(local_dir), token))
        url = f"https://huggingface.co/{repo_id}"
        if repo_id in self.gated:
            raise GatedRepoError(f"Access to model {repo_id} is restricted.", response=_response(403, url))
        if repo_id in self.missing:
            raise RepositoryNotFoundError(f"Repository Not Found for url: {url}", response=_response(404, url))
        source = self.root / repo_id
        files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
        for name in filter_repo_objects(files, allow_patterns=allow_patterns):
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, Path(local_dir) / name)
        return str(local_dir)


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------------------
# Tiers and sizes
# ---------------------------------------------------------------------------------------------------------

SHARED = {"turbo-vae", "text-encoder", "video-vae", "audio-vae"}


@pytest.mark.parametrize(
    ("tiers", "dits"),
    [
        ("distill", {"distill"}),
        ("base", {"base"}),
        ("540p", {"distill", "sr-540p"}),  # SR alone: the default stage-1 model comes along
        ("1080p", {"distill", "sr-1080p"}),
        ("base,1080p", {"base", "sr-1080p"}),
        ("distill,base,540p,1080p", {"distill", "base", "sr-540p", "sr-1080p"}),
    ],
)
def test_plan_components_per_tier(tiers: str, dits: set[str]) -> None:
    plan = plan_for(tiers)
    assert {c.name for c in plan.components} == dits | SHARED
    assert plan.approx_gib == pytest.approx(sum(COMPONENTS[name].approx_gib for name in dits | SHARED))


def test_size_table_sums() -> None:
    plan = plan_for("distill")
    # distill 56.99 + Turbo VAE 1.74 + T5Gemma 37.91 + Wan VAE 2.6 + audio VAE 0.58
    assert plan.approx_gib == pytest.approx(99.82)
    table = plan.table().splitlines()
    assert len(table) == 2 + len(plan.components) + 1
    assert table[-1].endswith("**99.82** |")
    assert "| manual |" in plan.table() and "| auto |" in plan.table()


def test_parse_tiers() -> None:
    assert parse_tiers(" distill, 540p,distill ") == ("distill", "540p")
    assert parse_tiers(["1080p"]) == ("1080p",)
    with pytest.raises(ValueError, match="720p"):
        parse_tiers("distill,720p")
    with pytest.raises(ValueError):
        parse_tiers("")


def test_patterns_merge_per_repository() -> None:
    merged = {repo.repo_id: patterns for repo, patterns in plan_for("distill,1080p").repo_patterns().items()}
    assert list(merged) == [MAGI, T5, WAN, SAO]
    assert merged[MAGI] == [
        "distill/*.json",
        "distill/*.safetensors",
        "1080p_sr/*.json",
        "1080p_sr/*.safetensors",
        f"turbo_vae/{TURBO_VAE_CONFIG}",
        f"turbo_vae/{TURBO_VAE_CHECKPOINT}",
    ]
    assert merged[WAN] == merged[SAO] == ["vae/config.json", f"vae/{DIFFUSERS_WEIGHTS}"]


# ---------------------------------------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------------------------------------


def test_download_distill_fetches_only_what_it_needs(
    hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    fetch, out = FakeHub(hub), tmp_path / "weights"
    paths = download("distill", out, progress=False, fetch=fetch)

    assert [(repo, local_dir, token) for repo, _, local_dir, token in fetch.calls] == [
        (MAGI, out / "daVinci-MagiHuman", "hf_from_env"),
        (T5, out / "t5gemma-9b-9b-ul2", "hf_from_env"),
        (WAN, out / "Wan2.2-TI2V-5B-Diffusers", "hf_from_env"),
        (SAO, out / "stable-audio-open-1.0", "hf_from_env"),
    ]
    dit_files = {f"distill/{name}" for name in (INDEX_NAME, *SHARDS)}
    turbo_files = {f"turbo_vae/{TURBO_VAE_CONFIG}", f"turbo_vae/{TURBO_VAE_CHECKPOINT}"}
    assert _files(out / "daVinci-MagiHuman") == dit_files | turbo_files  # no base, no SR, no README
    assert _files(out / "t5gemma-9b-9b-ul2") == {
        INDEX_NAME,
        *SHARDS,
        "config.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "tokenizer.json",
    }
    for folder in ("Wan2.2-TI2V-5B-Diffusers", "stable-audio-open-1.0"):  # vae/ only
        assert _files(out / folder) == {"vae/config.json", f"vae/{DIFFUSERS_WEIGHTS}"}

    assert paths.dits == {"distill": out / "daVinci-MagiHuman" / "distill"}
    assert paths.turbo_vae_checkpoint == out / "daVinci-MagiHuman" / "turbo_vae" / TURBO_VAE_CHECKPOINT
    assert paths.text_encoder == out / "t5gemma-9b-9b-ul2"
    assert paths.video_vae == out / "Wan2.2-TI2V-5B-Diffusers" / "vae"
    assert paths.audio_vae == out / "stable-audio-open-1.0" / "vae"


@pytest.mark.parametrize(
    ("tiers", "present", "absent"),
    [
        ("1080p", {"distill", "1080p_sr"}, {"base", "540p_sr"}),
        ("base,540p", {"base", "540p_sr"}, {"distill", "1080p_sr"}),
        ("distill,540p,1080p", {"distill", "540p_sr", "1080p_sr"}, {"base"}),
    ],
)
def test_download_dit_folders_per_tier(hub: Path, tmp_path: Path, tiers: str, present: set, absent: set) -> None:
    out = tmp_path / "weights"
    paths = download(tiers, out, token="hf_arg", progress=False, fetch=FakeHub(hub))
    folders = {p.name for p in (out / "daVinci-MagiHuman").iterdir()}
    assert present <= folders and not absent & folders
    assert {p.name for p in paths.dits.values()} == present


@pytest.mark.parametrize(("repo", "advice"), [(T5, "request access"), (SAO, "accept its terms")])
def test_gated_repository_says_where_to_accept(hub: Path, tmp_path: Path, repo: str, advice: str) -> None:
    with pytest.raises(DownloadError) as info:
        download("distill", tmp_path / "weights", progress=False, fetch=FakeHub(hub, gated=(repo,)))
    message = str(info.value)
    assert repo in message and f"https://huggingface.co/{repo}" in message
    assert advice in message and "HF_TOKEN" in message
    assert isinstance(info.value.__cause__, GatedRepoError)


def test_missing_repository_is_named(hub: Path, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=f"{WAN} was not found"):
        download("distill", tmp_path / "weights", progress=False, fetch=FakeHub(hub, missing=(WAN,)))


@pytest.mark.parametrize(
    ("removed", "named"),
    [
        (f"{MAGI}/turbo_vae/{TURBO_VAE_CHECKPOINT}", TURBO_VAE_CHECKPOINT),
        (f"{MAGI}/1080p_sr/{SHARDS[1]}", f"1080p_sr/{SHARDS[1]}"),
        (f"{T5}/tokenizer_config.json", "tokenizer_config.json"),
        (f"{SAO}/vae/{DIFFUSERS_WEIGHTS}", f"vae/{DIFFUSERS_WEIGHTS}"),
    ],
)
def test_file_missing_after_download_is_named(hub: Path, tmp_path: Path, removed: str, named: str) -> None:
    (hub / removed).unlink()
    with pytest.raises(DownloadError, match="is missing after downloading") as info:
        download("1080p", tmp_path / "weights", progress=False, fetch=FakeHub(hub))
    assert named in str(info.value)


@pytest.mark.parametrize(
    "error",
    [
        LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder"),
        HfHubHTTPError("503 Service Unavailable", response=_response(503, "https://huggingface.co/api/models")),
    ],
)
def test_no_hub_access_points_at_weights_dir(tmp_path: Path, error: Exception) -> None:
    def unreachable(repo_id: str, **_: object) -> str:
        raise error

    with pytest.raises(DownloadError) as info:
        download("distill", tmp_path / "weights", progress=False, fetch=unreachable)
    message = str(info.value)
    assert "no access to the Hugging Face Hub" in message and MAGI in message
    assert "--weights-dir" in message and "MAGIHUMAN_WEIGHTS" in message


def test_refused_token(tmp_path: Path) -> None:
    def refuse(repo_id: str, **_: object) -> str:
        raise HfHubHTTPError("401 Unauthorized", response=_response(401, f"https://huggingface.co/{repo_id}"))

    with pytest.raises(DownloadError, match=f"refused the token for {MAGI}.*HF_TOKEN"):
        download("distill", tmp_path / "weights", progress=False, fetch=refuse)


def test_real_snapshot_download_offline(tmp_path: Path) -> None:
    """The default fetch, with the hub switched off: the offline error, and no network traffic."""
    if not constants.HF_HUB_OFFLINE:
        pytest.skip("huggingface_hub was imported before HF_HUB_OFFLINE was set; refusing to reach the hub")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set"):
        download("distill", tmp_path / "weights", progress=False)


# ---------------------------------------------------------------------------------------------------------
# Local folders
# ---------------------------------------------------------------------------------------------------------


def test_resolve_complete_folder(hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "weights"
    downloaded = download("distill,540p", out, progress=False, fetch=FakeHub(hub))
    assert resolve_weights(out, "distill,540p") == downloaded
    assert resolve_weights(out, "540p").dit("sr-540p") == out / "daVinci-MagiHuman" / "540p_sr"
    with pytest.raises(CheckpointError, match="sr-1080p"):
        downloaded.dit("sr-1080p")
    monkeypatch.setenv("MAGIHUMAN_WEIGHTS", str(out))
    assert resolve_weights(tiers="distill").root == out


def test_resolve_names_missing_folder_and_command(hub: Path, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    download("distill", out, progress=False, fetch=FakeHub(hub))
    with pytest.raises(CheckpointError) as info:
        resolve_weights(out, "distill,1080p")
    message = str(info.value)
    assert str(out / "daVinci-MagiHuman" / "1080p_sr") in message
    assert f"python -m magihuman download --tiers distill,1080p --weights-dir {out}" in message


def test_resolve_names_missing_shard(hub: Path, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    download("distill", out, progress=False, fetch=FakeHub(hub))
    (out / "t5gemma-9b-9b-ul2" / SHARDS[0]).unlink()
    with pytest.raises(CheckpointError, match=f"shard .*{SHARDS[0]}"):
        resolve_weights(out, "distill")


def test_resolve_accepts_single_file_dit(hub: Path, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    download("distill", out, progress=False, fetch=FakeHub(hub))
    folder = out / "daVinci-MagiHuman" / "distill"
    for name in (INDEX_NAME, *SHARDS):
        (folder / name).unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        resolve_weights(out, "distill")
    _write(folder / "model.safetensors")
    assert resolve_weights(out, "distill").dit("distill") == folder


def test_resolve_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="folder .*distill.*`python -m magihuman download --tiers distill "):
        resolve_weights(tmp_path, "distill")


# ---------------------------------------------------------------------------------------------------------
# CLI helpers
# ---------------------------------------------------------------------------------------------------------


def test_run_download_prints_plan_then_downloads(
    hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    parser = argparse.ArgumentParser()
    add_download_arguments(parser)
    out = tmp_path / "weights"
    args = parser.parse_args(["--tiers", "distill,540p", "--weights-dir", str(out), "--token", "hf_cli"])
    fetch = FakeHub(hub)
    monkeypatch.setattr(weights, "download", functools.partial(download, progress=False, fetch=fetch))

    paths = run_download(args)
    printed = capsys.readouterr().out
    assert "**156.81**" in printed and "approximate" in printed
    assert f"{T5} is gated (manual)" in printed and f"{SAO} is gated (auto)" in printed
    assert {token for *_, token in fetch.calls} == {"hf_cli"}
    assert set(paths.dits) == {"distill", "sr-540p"}

    with pytest.raises(SystemExit):
        parser.parse_args(["--tiers", "720p"])
    assert "choose from distill, base, 540p, 1080p" in capsys.readouterr().err
