"""Context parallel and CFG-parallel on CPU processes (gloo), against the single-process results.

The pure split helpers are property-tested in this process. Everything that needs a process group runs in
one spawn per world size (2 and 4; importing torch dominates the cost), which executes a list of cases in
order on every rank and reports each case's outcome; the tests below then read those outcomes. World 4 uses
a tiny variant with 4 KV heads, where P = 4 is legal.
"""

from __future__ import annotations

import pickle
import threading
import time
import traceback
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from magihuman.config import TINY_DIT, TINY_FRAME_RECEPTIVE_FIELD, TINY_LOCAL_ATTN_LAYERS, DiTConfig
from magihuman.media import read_video_frames
from magihuman.model.dit import DiT, build_dit
from magihuman.parallel import runtime
from magihuman.parallel.runtime import Layout, ParallelContext, init_from_env, plan_layout
from magihuman.parallel.ulysses import (
    ContextParallel,
    heads_to_seq,
    local_rows,
    local_segments,
    row_range,
    seq_to_heads,
    split_sizes,
)
from magihuman.precision import compute_dtype
from magihuman.random_models import init_random_

PORTRAIT = Path(__file__).resolve().parents[1] / "assets" / "portraits" / "eileen_collins.jpg"

# ---------------------------------------------------------------------------------------------------------
# 1. The split, in this process
# ---------------------------------------------------------------------------------------------------------


@given(st.integers(0, 100_000), st.sampled_from((1, 2, 3, 4, 8)))
def test_split_sizes_cover_the_sequence_and_differ_by_at_most_one(n: int, parts: int) -> None:
    sizes = split_sizes(n, parts)
    assert len(sizes) == parts and sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1
    assert list(sizes) == sorted(sizes, reverse=True)  # the larger chunks first
    ranges = [row_range(sizes, r) for r in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(ranges[r][1] == ranges[r + 1][0] for r in range(parts - 1))


@given(st.tuples(st.integers(1, 500), st.integers(1, 200), st.integers(1, 300)), st.sampled_from((1, 2, 4, 8)))
def test_local_segments_partition_every_modality(segments: tuple[int, int, int], parts: int) -> None:
    n = sum(segments)
    sizes = split_sizes(n, parts)
    per_rank = [local_segments(segments, *row_range(sizes, r)) for r in range(parts)]
    assert tuple(map(sum, zip(*per_rank, strict=True))) == segments
    assert [sum(s) for s in per_rank] == list(sizes)
    # The rows each rank selects are exactly its slice of the packed sequence, modality by modality.
    rows = [
        torch.arange(length).unsqueeze(1) + offset for length, offset in zip(segments, (0, 1000, 2000), strict=True)
    ]
    packed = torch.cat(rows)
    for r in range(parts):
        start, end = row_range(sizes, r)
        mine = local_rows(rows, start, end)
        assert [part.shape[0] for part in mine] == list(per_rank[r])
        assert torch.equal(torch.cat(mine), packed[start:end])


@pytest.mark.parametrize(
    ("cp", "world", "heads_kv", "message"),
    [
        (3, 3, 8, "must be one of 1, 2, 4, 8"),
        (16, 16, 8, "must be one of 1, 2, 4, 8"),
        (6, 6, 8, "must be one of 1, 2, 4, 8"),
        (4, 4, 2, "must be one of 1, 2"),  # the tiny preset's 2 KV heads
        (2, 1, 8, "torchrun --standalone --nproc-per-node 2"),
        (2, 4, 8, "does not match the 4 process"),
    ],
)
def test_refused_cp_values_say_why(cp: int, world: int, heads_kv: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_layout(cp, world, heads_kv)


def test_layout_names() -> None:
    assert plan_layout(None, 1, 8).describe().startswith("1 ")
    assert Layout(4, 4, 2, "GPU").describe() == "4 GPUs: CP 4 (base model: CFG 2 × CP 2)"
    assert Layout(8, 8, 1, "GPU").describe() == "8 GPUs: CP 8"
    assert plan_layout(2, 2, 2, cfg_parallel=False).cfg == 1


# ---------------------------------------------------------------------------------------------------------
# 2. Cases run on every rank of a spawned gloo group
# ---------------------------------------------------------------------------------------------------------

TINY_4KV = replace(TINY_DIT, hidden_size=128, num_heads_kv=4)  # 8 query heads on 4 KV heads: P = 4 is legal


def _presets(config: DiTConfig) -> dict[str, DiTConfig]:
    sr = replace(config, coords_style="v1")
    return {
        "distill": config,
        "sr-1080p": replace(
            sr, local_attn_layers=TINY_LOCAL_ATTN_LAYERS, frame_receptive_field=TINY_FRAME_RECEPTIVE_FIELD
        ),
    }


# (latent T, H, W), audio rows, text rows: 85 tokens with chunk edges inside video and audio; 33 tokens where
# chunks hold only text (no video or audio rows at all) at P = 4.
SHAPES = (((5, 6, 8), 17, 8), ((3, 4, 4), 5, 16))


def _model(config: DiTConfig, seed: int, backend: str, dtype: torch.dtype) -> DiT:
    model = init_random_(build_dit(config, "cpu"), seed).eval().requires_grad_(False).set_compute_dtype(dtype)
    model.set_attention_backend(backend)
    return model


def _inputs(config: DiTConfig, shape, seed: int) -> tuple[torch.Tensor, ...]:
    (t, h, w), audio, text = shape
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, config.latent_channels, t, h, w, generator=g),
        torch.randn(1, audio, config.audio_in_channels, generator=g),
        torch.randn(text, config.text_in_channels, generator=g),
    )


def case_exchange_round_trip(ctx: ParallelContext, folder: Path) -> dict:
    shard = ctx.world_shard
    for n in (37, 4 * ctx.world + 1):
        full = torch.randn(n, 4 * ctx.world, 8, generator=torch.Generator().manual_seed(n))
        sizes = split_sizes(n, shard.size)
        start, end = row_range(sizes, shard.rank)
        heads = seq_to_heads(full[start:end], sizes, shard)
        per_rank = full.shape[1] // shard.size
        assert torch.equal(heads, full[:, shard.rank * per_rank : (shard.rank + 1) * per_rank])
        assert torch.equal(heads_to_seq(heads, sizes, shard), full[start:end])
    return {}


def case_dit_parity(ctx: ParallelContext, folder: Path) -> dict:
    """CP velocity vs the same model in one process, for both presets and both CPU backends, with the
    transformer in fp32 (assert_close defaults at any P) and, at P = 2, in bf16 (the reference's compute
    dtype; bitwise). In bf16 at P > 2 one bf16 rounding that flips because a matrix product got fewer rows
    grows through the layers of these random weights, so only fp32 can be held to the fp32 tolerances."""
    config = TINY_DIT if ctx.world == 2 else TINY_4KV
    dtypes = (torch.float32, torch.bfloat16) if ctx.world == 2 else (torch.float32,)
    bitwise = {}
    for preset, cfg in _presets(config).items():
        for backend in ("math", "sdpa"):
            for dtype in dtypes:
                model = _model(cfg, 5, backend, dtype)
                for i, shape in enumerate(SHAPES):
                    inputs = _inputs(cfg, shape, i)
                    alone = model(*inputs)
                    model.set_context_parallel(ContextParallel(ctx.world_shard))
                    split = model(*inputs)
                    model.set_context_parallel(None)
                    key = f"{preset}/{backend}/{str(dtype)[6:]}/{i}"
                    bitwise[key] = all(torch.equal(a, b) for a, b in zip(split, alone, strict=True))
                    if dtype == torch.float32:
                        for got, want in zip(split, alone, strict=True):
                            torch.testing.assert_close(got, want)
    return {"bitwise": bitwise}


def case_guided_pair(ctx: ParallelContext, folder: Path) -> dict:
    """CFG2 × CP(world/2): both forwards at once give the sequential guided velocity (and each branch's)."""
    from magihuman.parallel.serve import Driver, serve_forever
    from magihuman.sampling import guided

    config = TINY_DIT if ctx.world == 2 else TINY_4KV
    model = _model(config, 7, "sdpa", torch.bfloat16)
    if not ctx.is_driver:
        serve_forever(ctx, {"base": model})
        return {}
    video, audio, text = _inputs(config, SHAPES[0], 1)
    negative = torch.randn(3, config.text_in_channels, generator=torch.Generator().manual_seed(9))
    driver = Driver(ctx, {"base": model})
    try:
        (vc, ac), (vu, au) = driver.guided_pair(model)(video, audio, text, negative)
        with driver.detached():
            (vc1, ac1), (vu1, au1) = model(video, audio, text), model(video, audio, negative)
    finally:
        driver.shutdown()
    for got, want in ((vc, vc1), (ac, ac1), (vu, vu1), (au, au1)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(guided(vu, vc, 5.0), guided(vu1, vc1, 5.0))
    return {"bitwise": torch.equal(guided(vu, vc, 5.0), guided(vu1, vc1, 5.0))}


def _frames(path) -> np.ndarray:
    return read_video_frames(path)


def _assert_same_clip(split, alone, fp32: bool) -> None:
    """Bitwise where the preview computes in bf16 (its rounding hides the split). In fp32 a GEMM may block a
    chunk's rows differently from the whole sequence's: the latents agree to 1e-4, and the tiny random
    decoder (no trained smoothness) turns those last bits into visible but small pixel noise, so the clips
    are compared by PSNR: far above that of two different seeds (14 dB)."""
    a, b = _frames(split), _frames(alone)
    if not fp32:
        assert np.array_equal(a, b)
        return
    assert a.shape == b.shape
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    psnr = 10 * np.log10(255**2 / max(mse, 1e-12))
    assert psnr > 35, psnr


def case_engine(ctx: ParallelContext, folder: Path) -> dict:
    """The tiny engine started on all ranks (`start`, as every entry point does) vs the same engine on rank 0
    alone: distilled 256p, an SR upscale, the CFG base model, a cancel, then a worker that dies."""
    from magihuman.engine import GenerationRequest
    from magihuman.errors import GenerationCancelled
    from magihuman.optimize import SpeedFlags
    from magihuman.options import EngineOptions
    from magihuman.parallel import WorkerLost, start
    from magihuman.parallel.serve import _send_header

    options = EngineOptions("tiny", device="cpu", speed=SpeedFlags(attention="sdpa"))
    if not ctx.is_driver:
        try:
            start(options, ctx=ctx)
        except RuntimeError as exc:  # the unknown command the driver sends: this worker ends
            return {"ended": str(exc)}
        raise AssertionError("the worker was told to stop instead of failing")
    torch.set_num_threads(2)  # rank 0 decodes alone while the worker idles, as under torchrun (runtime.py)
    engine = start(options, output_root=folder / "out", ctx=ctx)
    driver = engine.parallel
    assert driver is not None, "start did not attach the engine to the worker"
    request = GenerationRequest(
        "A woman says hello.", portrait=PORTRAIT, resolution="256p", seconds=1, seed=21, sr_steps=2
    )
    out: dict = {"layout": engine.layout}
    try:
        # 1. Distilled 256p, then its SR upscale; 2. the base model (CFG pair) for 2 steps.
        split = engine.generate(request)
        split_sr = engine.upscale(split.take, "540p")
        base = replace(request, base_model="base", steps=2)
        split_base = engine.generate(base)
        with driver.detached():
            alone = engine.generate(request)
            alone_sr = engine.upscale(alone.take, "540p")
            alone_base = engine.generate(base)
        fp32 = compute_dtype("cpu") == torch.float32
        tolerance = {"rtol": 1e-4, "atol": 1e-4} if fp32 else {}  # fp32: see _assert_same_clip
        torch.testing.assert_close(split.take.video, alone.take.video, **tolerance)
        torch.testing.assert_close(split.take.audio, alone.take.audio, **tolerance)
        torch.testing.assert_close(split_base.take.video, alone_base.take.video, **tolerance)
        _assert_same_clip(split.video_path, alone.video_path, fp32)
        _assert_same_clip(split_sr.sr_video_path, alone_sr.sr_video_path, fp32)
        out["bitwise"] = torch.equal(split.take.video, alone.take.video)
        out["timings"] = split.timings
        # 3. Stop at step 2: the workers are idle and in step, the next request gives the same clip.
        cancel = threading.Event()

        def progress(phase: str, step: int, total: int) -> None:
            if phase == "base" and step == 2:
                cancel.set()

        try:
            engine.generate(request, on_progress=progress, cancel=cancel)
            raise AssertionError("the cancelled request finished")
        except GenerationCancelled as exc:
            assert (exc.stage, exc.step) == ("base", 2)
        again = engine.generate(request)
        torch.testing.assert_close(again.take.video, alone.take.video, **tolerance)
        # 4. A worker dies (an unknown command ends it): the next request says so, and so do later ones.
        _send_header(ctx, 99)
        for _ in range(2):
            try:
                engine.generate(request)
                raise AssertionError("a request ran without its worker")
            except WorkerLost as exc:
                out.setdefault("lost", str(exc))
    finally:
        driver.shutdown()
    assert "worker process stopped" in out["lost"] and "restart" in out["lost"], out["lost"]
    return out


CASES = {
    2: [case_exchange_round_trip, case_dit_parity, case_guided_pair, case_engine],
    4: [case_exchange_round_trip, case_dit_parity, case_guided_pair],
}


def _rank_main(rank: int, world: int, folder: str) -> None:
    folder_path = Path(folder)
    torch.set_num_threads(1)
    runtime.CONTROL_TIMEOUT = timedelta(seconds=120)  # a failing case must not leave idle ranks waiting for days
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world, timeout=timedelta(seconds=90)
    )
    env = {"WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)}
    ctx = init_from_env(world, 2 if world == 2 else 4, environ=env)
    outcomes = {}
    for case in CASES[world]:
        start = time.perf_counter()
        try:
            outcomes[case.__name__] = ("ok", case(ctx, folder_path))
        except Exception:  # reported per case by the tests below
            outcomes[case.__name__] = ("failed", traceback.format_exc())
        outcomes[f"{case.__name__} seconds"] = ("ok", time.perf_counter() - start)
        (folder_path / f"rank{rank}.pkl").write_bytes(pickle.dumps(outcomes))


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def spawned(request, tmp_path_factory) -> tuple[int, dict[int, dict]]:
    world = request.param
    folder = tmp_path_factory.mktemp(f"world{world}")
    mp.start_processes(_rank_main, args=(world, str(folder)), nprocs=world, start_method="spawn")
    return world, {r: pickle.loads((folder / f"rank{r}.pkl").read_bytes()) for r in range(world)}


def _outcome(spawned, case) -> dict:
    world, outcomes = spawned
    if case not in CASES[world]:
        pytest.skip(f"not run at world size {world}")
    for rank, per_case in outcomes.items():
        status, detail = per_case.get(case.__name__, ("missing", "the rank ended before this case"))
        assert status == "ok", f"rank {rank}:\n{detail}"
    return outcomes[0][case.__name__][1]


def test_exchange_round_trip(spawned) -> None:
    _outcome(spawned, case_exchange_round_trip)


def test_dit_velocity_matches_one_process(spawned) -> None:
    bitwise = _outcome(spawned, case_dit_parity)["bitwise"]
    if spawned[0] == 2:
        # In bf16 (the reference's compute dtype) P = 2 is bitwise. In fp32 the linears' rounding may depend
        # on how many rows a matrix product gets, which assert_close allows.
        reference = {case: same for case, same in bitwise.items() if "bfloat16" in case}
        assert all(reference.values()), f"P = 2 in bf16 should be bitwise equal: {reference}"


def test_cfg_parallel_guided_velocity_matches_sequential(spawned) -> None:
    _outcome(spawned, case_guided_pair)


def test_engine_end_to_end_cancel_and_lost_worker(spawned) -> None:
    out = _outcome(spawned, case_engine)
    assert out["layout"] == "2 CPU processes: CP 2 (base model: CFG 2 × CP 1)"
