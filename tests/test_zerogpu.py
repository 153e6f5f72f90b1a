"""ZeroGPU on the CPU: the ahead-of-time path run for real with the tiny DiT (AOTInductor compiles C++ here), the
start-up under spaces' real CUDA emulation (a subprocess), and the memory plan and time budgets."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magihuman.aot import (
    PF_X,
    PT_GNU_STACK,
    apply_package,
    build_package,
    clear_execstack,
    compile_shared_layers,
    example_inputs,
    package_path,
    shared_layers,
)
from magihuman.config import TINY_DIT
from magihuman.memory import GB
from magihuman.model.dit import build_dit
from magihuman.precision import compute_dtype
from magihuman.random_models import init_random_
from studio import gpu, space
from tests.zerogpu_stub import fork_context

ROOT = Path(__file__).resolve().parents[1]


def _tiny_dit() -> torch.nn.Module:
    dit = init_random_(build_dit(TINY_DIT, "cpu"), seed=3).eval().requires_grad_(False)
    dit.set_compute_dtype(compute_dtype("cpu"))  # as the preview engine's DiTs: the package key includes dtypes
    dit.set_attention_backend("sdpa")
    return dit


def _inputs():
    g = torch.Generator().manual_seed(0)
    # two clip shapes: the compiled graph must serve both token counts without recompiling
    return [
        (torch.randn(1, 48, 2, 4, 6, generator=g), torch.randn(1, 5, 64, generator=g), torch.randn(7, 64, generator=g)),
        (torch.randn(1, 48, 3, 6, 8, generator=g), torch.randn(1, 9, 64, generator=g), torch.randn(4, 64, generator=g)),
    ]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """One compile for the module (the slow part: about a minute of C++ on a small CPU)."""
    dit = _tiny_dit()
    with torch.no_grad():
        return build_package(dit, *example_inputs(dit), tmp_path_factory.mktemp("aoti"))


@pytest.mark.filterwarnings("ignore")
def test_aot_compiled_shared_layers_match_eager(package) -> None:
    dit = _tiny_dit()
    with torch.no_grad():
        eager = [dit(*args) for args in _inputs()]
        seconds = compile_shared_layers(dit, *example_inputs(dit), package.parent)  # found, not compiled again
        compiled = [dit(*args) for args in _inputs()]
    assert len(shared_layers(dit)) == 3 and seconds > 0
    assert all("forward" in vars(layer) for layer in shared_layers(dit))  # every shared layer runs the graph
    # Inductor fuses the bf16 roundings of the eager layer differently, so the match is to bf16 precision
    # (the tolerance of the golden DiT cases for another kernel), not bit for bit.
    for (v_e, a_e), (v_c, a_c) in zip(eager, compiled, strict=True):
        for got, want in ((v_c, v_e), (a_c, a_e)):
            assert (got - want).abs().max() < 0.1
            assert (got - want).norm() / want.norm() < 0.02
    # The package is reused: one file, unchanged, and its name depends on what the compiled code depends on.
    assert list(package.parent.glob("*.pt2")) == [package] and package_path(dit, package.parent) == package
    dit.set_attention_backend("math")
    assert package_path(dit, package.parent) != package


def _forward_in_fork(dit, results) -> None:
    torch.set_num_threads(1)  # GNU OpenMP's thread pool does not survive a fork: a child must not use it
    with torch.no_grad():
        results.put([t.numpy() for t in dit(*_inputs()[0])])  # by value: the child exits before the parent reads


@pytest.mark.filterwarnings("ignore")
def test_compiled_forward_loads_lazily_in_the_process_that_runs_it(package) -> None:
    """As on ZeroGPU: the main process installs the forwards without loading anything; a forked worker loads
    the package itself, binds the layers' own weights and computes the compiled result."""
    dit = _tiny_dit()
    apply_package(dit, package)
    assert all(layer.forward._pid is None for layer in shared_layers(dit))
    ctx = fork_context()
    results = ctx.SimpleQueue()
    worker = ctx.Process(target=_forward_in_fork, args=(dit, results))
    worker.start()
    forked = results.get()
    worker.join(60)
    assert all(layer.forward._pid is None for layer in shared_layers(dit))  # nothing loaded here
    with torch.no_grad():
        here = dit(*_inputs()[0])  # now loaded in this process too: the same graph, the same weights
    assert all(layer.forward._pid == os.getpid() for layer in shared_layers(dit))
    # the same compiled graph and weights (the fork ran it on one thread: summation order may differ)
    assert all(torch.allclose(torch.from_numpy(a), b, rtol=1e-5, atol=1e-5) for a, b in zip(forked, here, strict=True))


def test_compile_ahead_of_time_reuses_the_cache_without_a_gpu_call(package, monkeypatch) -> None:
    from magihuman.engine import Engine
    from magihuman.random_models import tiny_models

    models = tiny_models()
    for dit in models.dits.values():
        dit.set_attention_backend("sdpa")
    engine = Engine(models, "cpu", preview=True)
    monkeypatch.setattr(gpu, "package_dir", lambda: package.parent)
    assert all(package_path(dit, package.parent) == package for dit in models.dits.values())  # one tiny config

    def no_gpu_call():
        raise AssertionError("every package is in the cache folder: no GPU call is needed")

    monkeypatch.setattr(gpu, "_compile_packages", no_gpu_call)
    gpu.compile_ahead_of_time(engine)
    for dit in models.dits.values():
        assert all(Path(layer.forward.package) == package for layer in shared_layers(dit))


def test_clear_execstack(tmp_path) -> None:
    library = tmp_path / "lib.so"
    shutil.copy(sys.executable, library)
    data = bytearray(library.read_bytes())
    table, size, count = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    (entry,) = [
        table + i * size for i in range(count) if struct.unpack_from("<I", data, table + i * size)[0] == PT_GNU_STACK
    ]
    struct.pack_into("<I", data, entry + 4, struct.unpack_from("<I", data, entry + 4)[0] | PF_X)
    library.write_bytes(bytes(data))
    assert clear_execstack(library) is True
    assert not struct.unpack_from("<I", library.read_bytes(), entry + 4)[0] & PF_X
    assert clear_execstack(library) is False


# ---------------------------------------------------------------------------------------------------------
# Start-up under spaces' real CUDA emulation
# ---------------------------------------------------------------------------------------------------------

EMULATED_STARTUP = r"""
import json, os, threading
from magihuman.random_models import tiny_models
from magihuman.engine import Engine

# Built on the CPU before spaces patches torch: the tiny builders seed CUDA RNG state, which emulation refuses.
models, other = tiny_models(), tiny_models()

from tests.zerogpu_stub import cpu_torch_shims
cpu_torch_shims()
import spaces  # SPACES_ZERO_GPU=true: CUDA is emulated in this (the main) thread from here on
from spaces.zero.torch import patching
from studio import gpu, gpu_takes, space
from studio.runtime import EngineSlot

def loader(models):
    def load(status):
        status("placing the engine on cuda")
        seen["main thread"].append(threading.current_thread() is threading.main_thread())
        for module in (models.text.model, models.video_vae.model, models.audio_vae.model, models.decoder,
                       *models.dits.values()):
            module.to("cuda")
        return Engine(models, "cuda", preview=True)
    return load

seen = {"main thread": []}
slot = gpu.start_slot(loader(models))
seen.update(
    on_zerogpu=space.ON_ZEROGPU, size=space.GPU_SIZE, state=slot.status.state, status=slot.status.message,
    ready_at_once=slot.engine is not None, bound=gpu.bound_engine() is slot.engine,
    dit_device=str(next(models.dits["distill"].parameters()).device),
    emulated_tensors=len(patching.cuda_aliases), memory_env=os.environ.get("MAGIHUMAN_GPU_MEMORY_GB"),
    wrapped=all(
        hasattr(f, "zerogpu")
        for f in (gpu._gpu_generate, gpu_takes._gpu_advance_take, gpu_takes._gpu_finish_take, gpu.gpu_upscale)
    ),
)
# spaces packs what is on "cuda" when launch() runs: here, the engine
seen["packed_bytes"] = spaces.zero.torch.pack()
# The old way, loading on a background thread, fails under the emulation.
background = EngineSlot(loader(other)).start()
background.wait(120)
seen.update(background_state=background.status.state, background_message=background.status.message)
print("RESULT " + json.dumps(seen))
"""


def test_zerogpu_startup_places_the_engine_on_cuda_in_the_main_thread_before_launch(tmp_path) -> None:
    env = {
        **os.environ,
        "SPACES_ZERO_GPU": "true",
        "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9/",  # never reached: nothing is scheduled here
        "ZEROGPU_OFFLOAD_DIR": str(tmp_path / "tensors"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("MAGIHUMAN_GPU_MEMORY_GB", None)
    run = subprocess.run(
        [sys.executable, "-c", EMULATED_STARTUP], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    seen = json.loads(lines[-1].removeprefix("RESULT "))
    assert seen["on_zerogpu"] and seen["wrapped"] and seen["size"] == "xlarge"
    assert seen["main thread"] == [True, False]  # start_slot loaded in the main thread; the guard did not
    assert seen["state"] == "ready" and seen["ready_at_once"] and seen["bound"]
    assert seen["dit_device"] == "cuda:0" and seen["emulated_tensors"] > 0 and seen["packed_bytes"] > 0
    assert seen["memory_env"] == "96"  # the fp8 planner sizes for the call's GPU, not the emulated card
    assert seen["status"].startswith("ready in") and "ZeroGPU xlarge (96 GB)" in seen["status"]  # the page says it
    assert seen["background_state"] == "failed" and "CUDA" in seen["background_message"]


# ---------------------------------------------------------------------------------------------------------
# Fit and time budgets
# ---------------------------------------------------------------------------------------------------------


def test_zerogpu_model_plan_fits_the_size_it_asks_for() -> None:
    plan = space.zerogpu_plan()
    assert plan.size == "xlarge" and plan.fp8 == frozenset()  # distill + sr-540p in bf16: ≈ 91 GB of 96
    assert plan.needed_bytes <= plan.vram_bytes == space.ZEROGPU_VRAM["xlarge"]
    assert 75 * GB < plan.weight_bytes < plan.needed_bytes
    small = space.zerogpu_plan(("distill",))  # the base model alone fits the default size with fp8 linears
    assert small.size == "large" and small.fp8 == {"distill"} and small.needed_bytes <= small.vram_bytes


def test_durations_cover_the_transfer_and_refuse_what_no_free_quota_fits(monkeypatch) -> None:
    assert space.PLAN is None and space.GPU_SIZE is None  # off ZeroGPU: the budget is the job alone
    assert space.gpu_duration("256p", 5, 8, "distill", 5) == space.gpu_seconds("256p", 5, 8, "distill", 5)
    plan = space.zerogpu_plan()
    monkeypatch.setattr(space, "PLAN", plan)
    transfer = int(plan.weight_bytes / space.TRANSFER_BYTES_PER_S)
    quota = space.DEFAULT_QUOTA_S
    for resolution, seconds in (("256p", 5), ("256p", 10), ("540p", 10), ("1080p", 2)):
        asked = space.gpu_duration(resolution, seconds, None, "distill", 5)
        assert asked == space.gpu_seconds(resolution, seconds, 8, "distill", 5) + transfer
        assert asked * space.QUOTA_FACTOR["xlarge"] <= quota
    for seconds in (5, 10):  # 1080p beyond a couple of seconds: more than a free account's day on xlarge
        with pytest.raises(space.QuotaError, match=rf"{seconds}-second 1080p clip needs about \d+ s"):
            space.gpu_duration("1080p", seconds, None, "distill", 5)
    # Nonsense gets a budget; the engine's validation in the worker says what is wrong.
    assert space.gpu_duration("720p", "x", None, "nope", -3) > transfer
    monkeypatch.setenv(space.QUOTA_ENV, "2400")  # a Space for PRO users can allow more
    assert space.gpu_duration("1080p", 10, None, "distill", 5) > quota / 2


def test_a_gpu_space_fetches_missing_weights_before_loading(monkeypatch, tmp_path) -> None:
    import magihuman.weights as weights
    from magihuman.errors import CheckpointError

    calls = []

    def missing(weights_dir, tiers):
        raise CheckpointError("weights/daVinci-MagiHuman/distill is missing")

    monkeypatch.setattr(weights, "resolve_weights", missing)
    monkeypatch.setattr(weights, "download", lambda tiers, root, progress: calls.append(("download", tiers)))
    load = lambda status: calls.append("load") or "engine"  # noqa: E731
    monkeypatch.setenv("MAGIHUMAN_WEIGHTS", str(tmp_path))
    assert space.with_space_weights(load) is load  # not a Space: nothing added
    monkeypatch.setenv("SPACE_ID", "someone/studio")
    assert space.with_space_weights(load) is load  # a Space without a GPU (the CPU preview)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    lines = []
    assert space.with_space_weights(load)(lines.append) == "engine"
    assert calls == [("download", space.SPACE_TIERS), "load"] and str(tmp_path) in lines[0]
