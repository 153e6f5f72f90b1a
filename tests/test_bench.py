"""The benchmark's arithmetic (the timing itself is never asserted)."""

from __future__ import annotations

from magihuman.bench import attended_pairs, cases, forward_flops, main
from magihuman.config import dit_presets


def test_flops_match_the_published_arithmetic_floor() -> None:
    # Issue 6: at 790 TFLOP/s the 8 distilled steps at 256p cost 1.02 s, 5 SR steps 3.17 s (540p) and
    # 24.2 s (1080p), for a 5-second clip with ~300 text tokens.
    presets = dit_presets("full")
    seconds = {}
    for case in cases(["256p", "540p", "1080p"], 32, 126, 300, "full"):
        seconds[case.tier] = forward_flops(presets[case.model].dit, case.layout) / 790e12
    assert abs(8 * seconds["256p"] - 1.02) < 0.01
    assert abs(5 * seconds["540p"] - 3.17) < 0.01
    assert abs(5 * seconds["1080p"] - 24.2) < 0.1


def test_local_window_counts_fewer_pairs() -> None:
    config = dit_presets("full")["sr-1080p"].dit
    layout = cases(["1080p"], 32, 126, 300, "full")[0].layout
    local = attended_pairs(config, layout, layer=0)
    assert layout.num_tokens**2 > local > layout.num_tokens**2 / 2
    assert attended_pairs(config, layout, layer=3) == layout.num_tokens**2


def test_cpu_smoke_run_prints_a_table(capsys) -> None:
    main(["--tiers", "256p", "--text-tokens", "8"])
    out = capsys.readouterr().out
    assert "tiny preset" in out and "256p" in out and "ms/forward" in out
