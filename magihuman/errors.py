"""Exceptions the engine raises on purpose. Each message names the cause and, where there is one, the file."""

from __future__ import annotations

from typing import Protocol


class Cancel(Protocol):
    """What the engine and the samplers ask of a cancel flag (a `threading.Event` is one): checked at every step
    boundary, so a set flag stops a run within one denoising step."""

    def is_set(self) -> bool: ...


class MagiHumanError(Exception):
    """Base class of every deliberate engine error."""


class CheckpointError(MagiHumanError):
    """A weight file is missing, truncated, corrupt, or does not match the model it is loaded into."""


class GenerationCancelled(MagiHumanError):
    """The caller's cancel event was set; the run stopped at the next step boundary."""

    # A long take stopped after some of its windows were kept: its magihuman.take_state.TakeState, which
    # Engine.finish_take completes (equal to an uninterrupted run); None otherwise.
    take_state = None

    def __init__(self, stage: str, step: int, total: int) -> None:
        super().__init__(f"cancelled during {stage} after step {step} of {total}")
        self.stage, self.step, self.total = stage, step, total


class DownloadError(MagiHumanError):
    """Weights could not be fetched from the Hugging Face Hub; the message says which repository and what to do."""


class InputError(MagiHumanError):
    """A user upload cannot be used. The message says what is wrong with it and what to upload instead."""
