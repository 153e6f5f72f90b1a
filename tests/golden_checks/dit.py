"""`dit_*` fixtures: a DiT forward on tiny random weights, checked stage by stage (golden README, DiT cases).

Sizes, layer lists and the coordinate style come from the fixture's config. Local-attention layers are
computed as one masked softmax per query, so their expected values are the `*_fused` tensors; the
reference's partial-merge outputs (`out.*`) must still lie within the stated tolerance.
"""

from __future__ import annotations

import torch

from magihuman.config import DiTConfig
from magihuman.model.dit import DiT, build_dit
from magihuman.packing import token_coords
from tests.golden_checks import Fixture, Report, modality_ids


def build_from_fixture(config: dict, weights: dict[str, torch.Tensor]) -> DiT:
    model = build_dit(DiTConfig.from_dict(config), device="cpu")
    model.load_state_dict(weights, strict=True)
    return model.eval()


@torch.no_grad()
def check(fx: Fixture) -> None:
    tol = fx.recommended
    report = Report(fx)
    model = build_from_fixture(fx.config, fx.weights())
    video, audio, text = fx["in.video"], fx["in.audio"], fx["in.text"]
    layout = model.layout(video, audio, text)
    fused = "out_fused.video" in fx  # local attention: compare layers against the masked-softmax chain
    chain = "inter_fused.layer" if fused else "inter.layer"

    # 1. Packing, coordinates and RoPE: exact / rope_atol.
    report.equal("modality", modality_ids(layout), fx["inter.modality"])
    coords = token_coords(layout, model.config.coords_style, model.config.text_offset)
    report.equal("coords", coords, fx["inter.coords"])
    rope = model.rope_table(layout, "cpu")
    report.close("rope", rope, fx["inter.rope"], tol["rope_atol"])

    # 2. Embedding.
    report.close("embed", model.embed(video, audio, text), fx["inter.embed"], tol["embed_atol"])

    # 3. Each layer teacher-forced from the reference's previous residual stream.
    local = model.local_window(layout, "cpu")
    x_in = fx["inter.embed"]
    for i, layer in enumerate(model.block.layers):
        expected = fx[f"{chain}.{i}"]
        y = layer(x_in, layout.segments, fx["inter.rope"], model.attention_backend, local)
        report.close(
            f"layer {i}",
            y,
            expected,
            tol["layer_teacher_forced_atol"],
            rms_tol=tol["layer_teacher_forced_update_rel_rms"],
            rms_scale=expected - x_in,
        )
        x_in = expected

    # 4. Output heads, teacher-forced from the last layer.
    out_key = "out_fused" if fused else "out"
    v_heads, a_heads = model.heads(x_in, layout)
    report.close("heads video", v_heads, fx[f"{out_key}.video"], tol["heads_teacher_forced_atol"])
    report.close("heads audio", a_heads, fx[f"{out_key}.audio"], tol["heads_teacher_forced_atol"])

    # 5. End to end (both outputs together for the relative RMS).
    v, a = model(video, audio, text)
    got = torch.cat([v.flatten(), a.flatten()])
    keys = ("out_fused", "out") if fused else ("out",)
    for key in keys:
        want = torch.cat([fx[f"{key}.video"].flatten(), fx[f"{key}.audio"].flatten()])
        report.close(f"{key} end to end", got, want, tol["out_atol"], rms_tol=tol["out_rel_rms"])
    report.finish()
