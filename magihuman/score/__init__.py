"""Take scorecard: did a take say the requested words, with the mouth in sync, cleanly? CPU only, offline
once its models are present. `score_take(video, prompt=...)` returns a `Scorecard`; no gradio here."""

from magihuman.score.card import Scorecard, overall_score, score_take

__all__ = ["Scorecard", "overall_score", "score_take"]
