"""The ZeroGPU ahead-of-time path, run for real on the CPU with the tiny DiT (AOTInductor compiles C++ here)."""

from __future__ import annotations

import pytest
import torch

from magihuman.config import TINY_DIT
from magihuman.model.dit import build_dit, init_random_
from studio.zerogpu import compile_shared_layers, example_inputs, package_path, shared_layers


@pytest.mark.filterwarnings("ignore")
def test_aot_compiled_shared_layers_match_eager(tmp_path) -> None:
    dit = init_random_(build_dit(TINY_DIT, "cpu"), seed=3).eval().requires_grad_(False)
    dit.set_attention_backend("sdpa")
    g = torch.Generator().manual_seed(0)
    # two clip shapes: the compiled graph must serve both token counts without recompiling
    inputs = [
        (torch.randn(1, 48, 2, 4, 6, generator=g), torch.randn(1, 5, 64, generator=g), torch.randn(7, 64, generator=g)),
        (torch.randn(1, 48, 3, 6, 8, generator=g), torch.randn(1, 9, 64, generator=g), torch.randn(4, 64, generator=g)),
    ]
    with torch.no_grad():
        eager = [dit(*args) for args in inputs]
        seconds = compile_shared_layers(dit, *example_inputs(dit), tmp_path)
        compiled = [dit(*args) for args in inputs]
    assert len(shared_layers(dit)) == 3 and seconds > 0
    assert all("forward" in vars(layer) for layer in shared_layers(dit))  # every shared layer runs the graph
    # Inductor fuses the bf16 roundings of the eager layer differently, so the match is to bf16 precision
    # (the tolerance of the golden DiT cases for another kernel), not bit for bit.
    for (v_e, a_e), (v_c, a_c) in zip(eager, compiled, strict=True):
        for got, want in ((v_c, v_e), (a_c, a_e)):
            assert (got - want).abs().max() < 0.1
            assert (got - want).norm() / want.norm() < 0.02

    # A restart finds the package: nothing is compiled or written again, and the results are the same.
    (package,) = tmp_path.glob("*.pt2")
    before = package.stat()
    restarted = init_random_(build_dit(TINY_DIT, "cpu"), seed=3).eval().requires_grad_(False)
    restarted.set_attention_backend("sdpa")
    with torch.no_grad():
        compile_shared_layers(restarted, *example_inputs(restarted), tmp_path)
        again = [restarted(*args) for args in inputs]
    assert list(tmp_path.iterdir()) == [package] and package.stat().st_mtime_ns == before.st_mtime_ns
    assert package_path(restarted, tmp_path) == package
    for got, want in zip(again, compiled, strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    restarted.set_attention_backend("math")  # other compiled code: another package
    assert package_path(restarted, tmp_path) != package
