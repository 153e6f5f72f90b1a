"""The fields of a generation request, each declared once: name, kind, default, range, help.

Everything that takes a request reads this table: `GenerationRequest` (its attributes have these names and
defaults), `Engine.validate` (`Field.check`: texts, ranges, choices), the CLI (one flag per field), the studio
(one control per field, and the API parameters of `/generate`, optional unless `required`), the README's table
and the tests' helpers. Adding a field means one `Field(...)` here and the code that uses its value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from magihuman.config import (
    DEFAULT_SECONDS,
    MAX_SECONDS,
    MIN_SECONDS,
    REQUEST_LIMITS,
    RESOLUTIONS,
    SAMPLING,
    TEXT_ENCODER,
)
from magihuman.take_plan import MAX_TAKE_SECONDS

Kind = Literal["text", "image", "audio", "choice", "int", "float"]
FILE_KINDS = ("image", "audio")  # sent as a file path


@dataclass(frozen=True)
class Field:
    """One request field. `default=None` means "decided later" (say so in `help`): a random seed, the base
    model's own step count, the engine's own negative prompt. `noun` names the field in error messages. A text
    field's `maximum` counts characters; `tokens`: the text encoder's cap on what the model reads of it."""

    name: str
    kind: Kind
    label: str
    help: str
    default: Any = None
    choices: tuple[tuple[str, str], ...] = ()  # (value, what the UI shows)
    minimum: float | None = None
    maximum: float | None = None
    step: float = 1
    noun: str = ""
    advanced: bool = False  # the studio puts it in the Advanced panel
    required: bool = False
    missing: str = ""  # what the error for an empty required field asks for
    tokens: int | None = None

    @property
    def is_file(self) -> bool:
        return self.kind in FILE_KINDS

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(value for value, _ in self.choices)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def what(self) -> str:
        return self.noun or self.name.replace("_", " ")

    def range_text(self) -> str:
        """Choices ("256p, 540p, 1080p"), bounds ("1-10"), or "" (README table, CLI help)."""
        if self.choices:
            return ", ".join(self.values)
        if self.minimum is not None and self.maximum is not None:
            return f"{_number(self.minimum)}-{_number(self.maximum)}"
        return ""

    def check(self, value: Any) -> Any:
        """`value` if it is a valid value of this field (None where the default is None; a text stripped, None
        when empty), else ValueError with a message for the user. Whole-number fields take ints only; the UI
        converts what its sliders send."""
        if self.kind == "text":
            return self._check_text(value)
        if value is None and self.default is None:
            return None
        if self.choices:
            if value not in self.values:
                raise ValueError(f"{self.what} must be one of {', '.join(self.values)}, not {value!r}")
        elif self.kind in ("int", "float"):
            whole = self.kind == "int"
            number_ok = isinstance(value, int) if whole else isinstance(value, int | float)
            if isinstance(value, bool) or not number_ok or not self.minimum <= value <= self.maximum:
                kind = "a whole number" if whole else "a number"
                bounds = f"from {_number(self.minimum)} to {_number(self.maximum)}"
                raise ValueError(
                    f"{self.what} must be {kind} {bounds}" + (" (or empty)" if self.default is None else "")
                )
        return value

    def _check_text(self, value: Any) -> str | None:
        text = value.strip() if isinstance(value, str) else ""
        if not text:
            if self.required:
                raise ValueError(f"the {self.what} is empty: {self.missing}")
            return None
        if len(text) > self.maximum:
            read = f" (the model reads at most {self.tokens} tokens of it)" if self.tokens else ""
            raise ValueError(f"the {self.what} has {len(text)} characters; the limit is {_number(self.maximum)}{read}")
        return text


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _resolution_label(name: str) -> str:
    return name if RESOLUTIONS[name].sr_model is None else f"{name} (256p + super-resolution)"


FIELDS: tuple[Field, ...] = (
    Field(
        "prompt",
        "text",
        "Prompt",
        "what the person looks like, says (and in which language) and the sound around them; the dialogue "
        "builder writes it in the model's format",
        maximum=REQUEST_LIMITS.max_prompt_chars,
        required=True,
        missing="describe the person, what they say, and in which language",
        tokens=TEXT_ENCODER.max_tokens,
    ),
    Field(
        "portrait",
        "image",
        "Portrait (optional: without one, text-to-video)",
        "a photo of the person (image-to-video); none: text-to-video",
    ),
    Field(
        "audio",
        "audio",
        "Your own speech (optional): the video is lip-synced to it",
        f"a recording to lip-sync to, up to {MAX_TAKE_SECONDS} s; the take carries it (a shorter one shortens "
        "the take); none: the model makes the speech",
    ),
    Field(
        "resolution",
        "choice",
        "Resolution",
        "256p is the base stage; 540p and 1080p add super-resolution on top of it",
        default="256p",
        choices=tuple((name, _resolution_label(name)) for name in RESOLUTIONS),
    ),
    Field(
        "aspect",
        "choice",
        "Aspect",
        "landscape (448×256 at 256p) or portrait (256×448)",
        default="landscape",
        choices=(("landscape", "Landscape"), ("portrait", "Portrait")),
    ),
    Field(
        "seconds",
        "int",
        "Duration (s)",
        f"length in seconds: up to {MAX_SECONDS} s is one clip, longer takes (up to {MAX_TAKE_SECONDS} s) are made "
        f"window by window; empty: {DEFAULT_SECONDS} s, or with your recording its whole length",
        minimum=MIN_SECONDS,
        maximum=MAX_TAKE_SECONDS,
        noun="duration",
    ),
    Field(
        "seed",
        "int",
        "Seed",
        "the same seed and settings give the same clip; empty: random (the result says which)",
        minimum=0,
        maximum=REQUEST_LIMITS.max_seed,
    ),
    Field(
        "base_model",
        "choice",
        "Base model",
        f"the distilled model ({SAMPLING.distill_steps} steps, no guidance) or the base model "
        f"({SAMPLING.base_steps} steps, classifier-free guidance)",
        default="distill",
        choices=(
            ("distill", f"Distilled, {SAMPLING.distill_steps} steps"),
            ("base", f"Base with guidance, {SAMPLING.base_steps} steps"),
        ),
        advanced=True,
    ),
    Field(
        "steps",
        "int",
        "Steps",
        f"denoising steps of the base stage (distilled at most {REQUEST_LIMITS.max_steps['distill']}); empty: "
        f"{SAMPLING.distill_steps} distilled, {SAMPLING.base_steps} base",
        minimum=1,
        maximum=max(REQUEST_LIMITS.max_steps.values()),
        advanced=True,
    ),
    Field(
        "sr_steps",
        "int",
        "SR steps",
        "denoising steps of the super-resolution stage",
        default=SAMPLING.sr_steps,
        minimum=1,
        maximum=REQUEST_LIMITS.max_sr_steps,
        noun="super-resolution steps",
        advanced=True,
    ),
    Field(
        "guidance",
        "float",
        "Guidance (base model only)",
        f"classifier-free guidance scale of the base model; empty: {SAMPLING.video_guidance_high:g}, then "
        f"{SAMPLING.video_guidance_low:g} for the last half of the steps",
        minimum=REQUEST_LIMITS.min_guidance,
        maximum=REQUEST_LIMITS.max_guidance,
        step=0.5,
        advanced=True,
    ),
    Field(
        "negative_prompt",
        "text",
        "Negative prompt (base model only)",
        "what guidance steers away from; empty: the engine's own (blurry face, warped features, lips out of sync, "
        "flicker, ...)",
        maximum=REQUEST_LIMITS.max_prompt_chars,
        tokens=TEXT_ENCODER.max_tokens,
        advanced=True,
    ),
    Field(
        "quality",
        "choice",
        "Encoding quality",
        "H.264 setting of the mp4s: high keeps the fine detail the SR comparison shows (larger files)",
        default="high",
        choices=(
            ("standard", "Standard (3× smaller files)"),
            ("high", "High (keeps SR detail)"),
            ("reference", "Reference (CRF 10 medium, slowest)"),
        ),
        advanced=True,
    ),
    Field(
        "shots",
        "text",
        "Shots (a scene)",
        'a scene of several shots as JSON, e.g. [{"prompt": "...", "seconds": 6}, {"seconds": 4}] (a shot '
        "without a prompt takes the main one; each starts fresh from the portrait); the take lasts their sum, "
        f"at most {MAX_TAKE_SECONDS} s; empty: one shot",
        maximum=REQUEST_LIMITS.max_prompt_chars * 4,
        advanced=True,
    ),
)
FIELD = {f.name: f for f in FIELDS}
FILE_FIELDS = tuple(f.name for f in FIELDS if f.is_file)


def readme_table() -> str:
    """The Markdown table of the fields (the README holds a copy; a test keeps the two equal)."""
    rows = ["| field | CLI flag | default | range | what it is |", "|---|---|---|---|---|"]
    for f in FIELDS:
        default = "required" if f.required else ("empty" if f.default is None else f"`{f.default}`")
        rows.append(f"| `{f.name}` | `{f.flag}` | {default} | {f.range_text()} | {f.help} |")
    return "\n".join(rows)
