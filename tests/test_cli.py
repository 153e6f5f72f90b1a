"""`python -m magihuman`: generate with the tiny engine, and a download without hub access."""

from __future__ import annotations

from magihuman.__main__ import main
from tests.probe import probe_media


def test_generate_writes_the_clip_and_prints_the_timing_table(tmp_path, capsys) -> None:
    out = tmp_path / "clip.mp4"
    code = main(
        [
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "A man says hi.",
            "--seconds",
            "1",
            "--seed",
            "5",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr()
    assert code == 0
    assert probe_media(out).video.frames == 25
    assert "seed 5" in printed.out and "denoise" in printed.out and "total" in printed.out
    assert "preview" in printed.err  # the tiny engine says its output is noise


def test_bad_input_exits_with_the_cause(tmp_path, capsys) -> None:
    code = main(["generate", "--model", "tiny", "--prompt", " ", "--out", str(tmp_path / "x.mp4")])
    assert code == 2 and "prompt is empty" in capsys.readouterr().err


def test_download_without_hub_access_explains_what_to_do(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["download", "--tiers", "distill", "--weights-dir", str(tmp_path)])
    assert code == 2
    assert "--weights-dir" in capsys.readouterr().err
