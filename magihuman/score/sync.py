"""Sync: does the mouth move with the voice, and how many frames apart? A proxy, not SyncNet.

The face is OpenCV's Haar cascade (4.x wheels; 5.x dropped it); MediaPipe's landmarks would need protobuf 4 and
JAX, so the mouth is a fixed part of the box. Confidence is peak minus median |correlation|, as SyncNet reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magihuman.score.clip import SAMPLE_RATE, TakeMedia

MAX_LAG_FRAMES = 15
FACE_PROBES = 5  # frames searched for a face
OFFSET_FLAG_FRAMES = 3  # |offset| ≥ this is visibly out of sync (~120 ms at 25 fps)
MIN_CONFIDENCE = 0.1  # below this the peak is indistinguishable from the other lags
STILL_MOUTH = 0.5  # grey levels (RMS over the region): less is compression noise on a still face
# The mouth inside a Haar face box (fractions of its width and height): the box spans brows to chin.
_MOUTH_X, _MOUTH_Y = (0.25, 0.75), (0.62, 0.95)


@dataclass(frozen=True)
class SyncEstimate:
    face_found: bool
    offset_frames: int | None = None
    confidence: float | None = None

    def flags(self) -> list[str]:
        if not self.face_found:
            return ["no face found"]
        if self.confidence < MIN_CONFIDENCE:
            return ["mouth does not follow the voice"]
        if abs(self.offset_frames) >= OFFSET_FLAG_FRAMES:
            return [f"mouth and voice {self.offset_frames:+d} frames apart"]
        return []


def find_face(frames: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the largest face, the median over `FACE_PROBES` frames where one is found; None if none."""
    import cv2

    detector = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    min_side = max(24, min(frames.shape[1:]) // 8)
    boxes = []
    for index in np.linspace(0, len(frames) - 1, min(FACE_PROBES, len(frames))).round().astype(int):
        found = detector.detectMultiScale(frames[index], scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        if len(found):
            boxes.append(max(found, key=lambda box: box[2] * box[3]))
    if not boxes:
        return None
    x, y, w, h = np.median(np.array(boxes), axis=0).round().astype(int)
    return int(x), int(y), int(w), int(h)


def mouth_signal(frames: np.ndarray, face: tuple[int, int, int, int]) -> np.ndarray | None:
    """(F,) the mouth region's first principal component over time; None when the mouth stays still."""
    x, y, w, h = face
    x0, x1 = x + int(_MOUTH_X[0] * w), x + int(_MOUTH_X[1] * w)
    y0, y1 = y + int(_MOUTH_Y[0] * h), min(frames.shape[1], y + int(_MOUTH_Y[1] * h))
    region = frames[:, y0:y1, x0:x1].reshape(len(frames), -1).astype(np.float32)  # (F, pixels)
    region -= region.mean(axis=0)
    u, s, _ = np.linalg.svd(region, full_matrices=False)
    if s[0] / np.sqrt(region.size) < STILL_MOUTH:
        return None
    return u[:, 0] * s[0]


def voice_envelope(audio: np.ndarray, fps: float, frames: int) -> np.ndarray:
    """(frames,) RMS of the audio over each video frame's span (zero past the end of the audio)."""
    edges = (np.arange(frames + 1) * SAMPLE_RATE / fps).round().astype(int)
    power = np.concatenate([[0.0], np.cumsum(np.square(audio, dtype=np.float64))])
    edges = np.minimum(edges, len(audio))
    counts = np.maximum(np.diff(edges), 1)
    return np.sqrt((power[edges[1:]] - power[edges[:-1]]) / counts)


def lagged_correlations(mouth: np.ndarray, voice: np.ndarray, max_lag: int) -> dict[int, float]:
    """Pearson correlation of mouth[t] with voice[t + lag] over the frames both cover, per lag."""
    out = {}
    for lag in range(-max_lag, max_lag + 1):
        a = mouth[max(0, -lag) : len(mouth) - max(0, lag)]
        b = voice[max(0, lag) : len(voice) - max(0, -lag)]
        if len(a) > 2 and a.std() > 0 and b.std() > 0:
            corr = float(np.corrcoef(a, b)[0, 1])
            if np.isfinite(corr):
                out[lag] = corr
    return out


def estimate_sync(take: TakeMedia) -> SyncEstimate:
    face = find_face(take.frames)
    if face is None:
        return SyncEstimate(face_found=False)
    mouth = mouth_signal(take.frames, face)
    if mouth is None:
        return SyncEstimate(face_found=True, offset_frames=0, confidence=0.0)
    voice = voice_envelope(take.audio, take.fps, len(take.frames))
    max_lag = min(MAX_LAG_FRAMES, len(mouth) // 3)
    strengths = {lag: abs(c) for lag, c in lagged_correlations(mouth, voice, max_lag).items()}
    if not strengths:  # a still face or silent audio: nothing moves together
        return SyncEstimate(face_found=True, offset_frames=0, confidence=0.0)
    best = max(strengths, key=strengths.get)
    confidence = strengths[best] - float(np.median(list(strengths.values())))
    return SyncEstimate(face_found=True, offset_frames=best, confidence=round(confidence, 3))
