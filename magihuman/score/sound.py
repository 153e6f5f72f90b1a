"""Sound: DNSMOS (Microsoft's non-intrusive speech quality model) signal, background and overall, 1-5.

The `speechmos` wheel's ONNX model, run with onnxruntime directly (its entry point imports librosa only for the
P.808 score). As in speechmos: 9.01 s windows 1 s apart, raw outputs mapped through the published polynomials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from magihuman.score.clip import SAMPLE_RATE

WINDOW_SECONDS = 9.01
# Polynomial fits of the non-personalised DNSMOS model: raw (sig, bak, ovr) -> MOS, highest power first.
_SIG_FIT = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
_BAK_FIT = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
_OVR_FIT = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


@dataclass(frozen=True)
class Dnsmos:
    overall: float
    signal: float
    background: float


@lru_cache(maxsize=1)
def _session(pid: int):
    """One single-threaded session per process (keyed by pid): onnxruntime's thread pools do not survive a
    fork, and one thread runs a 9 s window in tens of milliseconds."""
    import onnxruntime as ort

    path = resources.files("speechmos") / "dnsmos_models" / "sig_bak_ovr.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def dnsmos(audio: np.ndarray) -> Dnsmos:
    """DNSMOS of (N,) float32 16 kHz mono audio in [-1, 1]."""
    session = _session(os.getpid())
    window = int(WINDOW_SECONDS * SAMPLE_RATE)
    audio = np.clip(audio, -1, 1).astype(np.float32)
    if len(audio) < window:
        audio = np.tile(audio, -(-window // max(len(audio), 1)))
    starts = range(0, len(audio) - window + 1, SAMPLE_RATE)
    raw = np.array([session.run(None, {"input_1": audio[None, s : s + window]})[0][0] for s in starts])
    sig, bak, ovr = raw[:, 0], raw[:, 1], raw[:, 2]
    return Dnsmos(
        overall=float(np.mean(_OVR_FIT(ovr))),
        signal=float(np.mean(_SIG_FIT(sig))),
        background=float(np.mean(_BAK_FIT(bak))),
    )
