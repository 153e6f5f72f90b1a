"""The automatic fp8 plan: which DiTs shrink so that the engine fits the card (no GPU needed: the card's
memory is given)."""

from __future__ import annotations

import pytest

from magihuman.config import dit_presets
from magihuman.memory import QUANTISE_FIRST, dit_bytes, plan_fp8

H100 = 80 * 2**30  # torch reports 79.1 GiB for an H100 80GB; the plan must not rely on the rounding
H200 = 141 * 10**9
STUDIO_SET = ("distill", "sr-540p")


def test_dit_sizes_are_exact_and_fp8_halves_the_linears() -> None:
    distill = dit_presets("full")["distill"].dit
    bf16, fp8 = dit_bytes(distill, False), dit_bytes(distill, True)
    assert 30.0e9 < bf16 < 31.5e9  # 15.3 B parameters, nearly all in bf16 linears
    assert 0.48 < fp8 / bf16 < 0.52


def test_an_h100_gets_the_sr_model_in_fp8_and_an_h200_keeps_bf16() -> None:
    plan = plan_fp8(STUDIO_SET, None, "cuda", available_bytes=H100)
    assert plan.quantised == {"sr-540p"} and plan.needed_bytes <= H100 < plan.bf16_bytes
    assert "sr-540p" in plan.describe() and "--no-fp8" in plan.describe() and "fits" in plan.describe()
    assert plan_fp8(STUDIO_SET, None, "cuda", available_bytes=H200).quantised == set()
    assert plan_fp8(STUDIO_SET, None, "cuda", available_bytes=H200).describe() is None


def test_offload_frees_enough_for_bf16_on_an_h100() -> None:
    assert plan_fp8(STUDIO_SET, None, "cuda", offload=True, available_bytes=H100).quantised == set()


@pytest.mark.parametrize("available", [48 * 2**30, 24 * 2**30], ids=["48GB", "24GB"])
def test_small_cards_quantise_sr_models_before_base_models(available: int) -> None:
    dits = ("distill", "sr-540p", "sr-1080p")
    plan = plan_fp8(dits, None, "cuda", offload=True, available_bytes=available)
    order = [name for name in QUANTISE_FIRST if name in dits]
    assert plan.quantised == set(order[: len(plan.quantised)])  # a prefix of the order
    assert "distill" not in plan.quantised or {"sr-540p", "sr-1080p"} <= plan.quantised
    if plan.needed_bytes > available:
        assert plan.quantised == set(dits) and "may still not fit" in plan.describe()


def test_explicit_choices_and_cpu_are_obeyed() -> None:
    assert plan_fp8(STUDIO_SET, True, "cuda", available_bytes=H200).quantised == set(STUDIO_SET)
    assert plan_fp8(STUDIO_SET, False, "cuda", available_bytes=2**30).quantised == set()
    assert plan_fp8(STUDIO_SET, True, "cuda").describe() is None  # asked for: nothing to explain
    assert plan_fp8(STUDIO_SET, None, "cpu").quantised == set()
    assert plan_fp8(STUDIO_SET, None, "cuda", size="tiny", available_bytes=2**20).quantised == set()
