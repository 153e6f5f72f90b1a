"""The prompt enhancer: a rough idea in, a prompt in the model's official format out, written by an LLM on the
user's own OpenAI-compatible endpoint (OpenAI, or a local Ollama / llama.cpp / vLLM server).

The LLM never writes the final text: it fills a `Scene` asked for with a JSON schema, and `render` writes the
prompt with the dialogue builder, so CJK spacing, quoting and the blocks are always right.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from magihuman.config import MAX_SECONDS, MIN_SECONDS, REQUEST_LIMITS
from magihuman.errors import MagiHumanError
from magihuman.prompts import (
    LANGUAGE_NAMES,
    DialogueLine,
    build_prompt,
    clean_text,
    get_language,
    line_length_warning,
    speaker_subject,
)
from magihuman.take_plan import MAX_TAKE_SECONDS

# --- 1. Configuration ------------------------------------------------------------------------------------

BASE_URL_ENV, API_KEY_ENV = "OPENAI_BASE_URL", "OPENAI_API_KEY"  # the openai client's own conventions
MODEL_ENV, TIMEOUT_ENV = "MAGIHUMAN_ENHANCER_MODEL", "MAGIHUMAN_ENHANCER_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
MAX_IDEA_CHARS = 2000
MAX_LINES = 6  # a clip is at most MAX_SECONDS long: more turns than this cannot be spoken in it
MAX_ANSWER_TOKENS = 1500  # the structure is ~300 words; a bound keeps a rambling model from running for minutes

HOW_TO_ENABLE = (
    f"The prompt enhancer is off. Turn it on by naming a chat model and, for anything but OpenAI itself, its "
    f"server: set {MODEL_ENV} (or start with --enhancer-model), {BASE_URL_ENV} (e.g. http://localhost:11434/v1 "
    f"for Ollama, http://localhost:8080/v1 for llama.cpp, http://localhost:8000/v1 for vLLM) and, for a hosted "
    f"service, {API_KEY_ENV}; then restart. See the README, section 'Prompt enhancer'."
)


class EnhancerError(MagiHumanError):
    """The enhancer could not produce a prompt; the message names the cause and what to do."""


@dataclass(frozen=True)
class EnhancerConfig:
    """Where the enhancer's LLM is (`base_url` None: OpenAI's own API); enabled once a model is named."""

    model: str | None
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(cls, model: str | None = None, environ: Mapping[str, str] = os.environ) -> EnhancerConfig:
        timeout = environ.get(TIMEOUT_ENV) or ""
        try:
            timeout_s = float(timeout) if timeout else DEFAULT_TIMEOUT_S
        except ValueError:
            raise EnhancerError(f"{TIMEOUT_ENV} must be a number of seconds, not {timeout!r}") from None
        if not 0 < timeout_s <= 600:
            raise EnhancerError(f"{TIMEOUT_ENV} must be between 0 and 600 seconds, not {timeout_s:g}")
        return cls(
            model=(model or environ.get(MODEL_ENV) or "").strip() or None,
            base_url=(environ.get(BASE_URL_ENV) or "").strip() or None,
            api_key=(environ.get(API_KEY_ENV) or "").strip() or None,
            timeout_s=timeout_s,
        )

    @property
    def enabled(self) -> bool:
        return self.model is not None and (self.base_url is not None or self.api_key is not None)

    @property
    def where(self) -> str:
        return f"{self.base_url or 'the OpenAI API'} (model {self.model})"


# --- 2. The structure ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpokenLine:
    speaker: str
    language: str  # one of LANGUAGE_NAMES
    emotion: str  # how the face looks while saying it: "quietly proud"
    voice: str  # tone, pace, pitch, volume: "bright, unhurried, mid-pitched"
    text: str  # the exact words, in the language's own script


@dataclass(frozen=True)
class Scene:
    appearance: str  # who is on camera: age, face, hair, clothing, posture
    setting: str  # where, and the light
    performance: str  # expressions and micro-gestures around the lines, without quoting them
    camera: str  # a static shot: distance, angle, depth of field
    lines: tuple[SpokenLine, ...]
    background_sound: str  # "" for none

    def as_dict(self) -> dict:
        return asdict(self)


_TEXT = {"type": "string"}
SCENE_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "appearance": _TEXT,
        "setting": _TEXT,
        "performance": _TEXT,
        "camera": _TEXT,
        "lines": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "speaker": _TEXT,
                    "language": {"type": "string", "enum": list(LANGUAGE_NAMES)},
                    "emotion": _TEXT,
                    "voice": _TEXT,
                    "text": _TEXT,
                },
                "required": ["speaker", "language", "emotion", "voice", "text"],
                "additionalProperties": False,
            },
        },
        "background_sound": _TEXT,
    },
    # Structured outputs in strict mode want every property required and no others.
    "required": ["appearance", "setting", "performance", "camera", "lines", "background_sound"],
    "additionalProperties": False,
}


def max_lines(seconds: float | None) -> int:
    """The most lines a take of `seconds` can hold: MAX_LINES per MAX_SECONDS (a long take is made window by
    window, its lines split across the windows)."""
    return MAX_LINES * max(1, math.ceil((seconds or 0) / MAX_SECONDS))


def parse_scene(content: str | None, most_lines: int = MAX_LINES) -> Scene:
    """The answer as a Scene, else ValueError (fed back to the LLM). A code fence is tolerated: local models add
    one even when told not to."""
    if not content or not content.strip():
        raise ValueError("the answer was empty")
    text = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", content.strip())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the answer is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("the answer must be one JSON object")
    fields = {name: _string(data, name, "the object") for name in ("appearance", "setting", "performance", "camera")}
    background = data.get("background_sound", "")
    if not isinstance(background, str):
        raise ValueError('"background_sound" must be a string ("" for none)')
    raw_lines = data.get("lines")
    if not isinstance(raw_lines, list) or not raw_lines:
        raise ValueError('"lines" must be a non-empty array of spoken lines')
    if len(raw_lines) > most_lines:
        raise ValueError(f'"lines" has {len(raw_lines)} entries; a clip of this length fits at most {most_lines}')
    lines = []
    for i, raw in enumerate(raw_lines, 1):
        if not isinstance(raw, dict):
            raise ValueError(f"line {i} must be an object")
        where = f"line {i}"
        values = {name: _string(raw, name, where) for name in ("speaker", "language", "emotion", "voice", "text")}
        try:
            values["language"] = get_language(values["language"]).name
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        lines.append(SpokenLine(**values))
    return Scene(**fields, lines=tuple(lines), background_sound=clean_text(background))


def _string(data: dict, name: str, where: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not clean_text(value):
        raise ValueError(f'{where} needs a non-empty string "{name}"')
    return clean_text(value)


# --- 3. Rendering and the duration check -----------------------------------------------------------------


def render(scene: Scene) -> str:
    """The prompt: one English paragraph quoting each line with its face and voice, then the blocks."""
    spoken = []
    for line in scene.lines:
        text = line.text.replace('"', "'")  # the Dialogue block's quotes must stay unambiguous
        spoken.append(f'{speaker_subject(line.speaker)}, {line.emotion}, says in a {line.voice} voice: "{text}"')
    body = " ".join(_sentence(part) for part in (scene.appearance, scene.setting, scene.performance, *spoken))
    body += " " + _sentence(scene.camera)
    dialogue = [DialogueLine(line.speaker, line.language, line.text) for line in scene.lines]
    return build_prompt(body, dialogue, scene.background_sound or None)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?", '"', "…")) else text + "."


def duration_warning(scene: Scene, seconds: float) -> str | None:
    return line_length_warning([DialogueLine(ln.speaker, ln.language, ln.text) for ln in scene.lines], seconds)


# --- 4. Talking to the endpoint --------------------------------------------------------------------------

SYSTEM_PROMPT = """You plan short talking-head video clips for a video model that animates one still camera \
shot of people speaking. You receive a rough idea and answer with one JSON object that fills this structure:

- appearance: who is on camera, in plain concrete English: age, face, hair, clothing, posture. If a portrait \
description is given, keep to it exactly.
- setting: where they are and how the light falls, in one or two sentences.
- performance: in time order, the small visible things the face and body do around the spoken lines: \
micro-expressions (brows, eyes, cheeks, the corners of the mouth), how the lips and jaw move, a nod or a glance. \
The subject stays in place: no walking, turning away, large gestures or objects moving through the frame. Do not \
quote the spoken words here; they are added where they belong.
- camera: one static shot: distance (close-up, medium close-up, medium shot), angle, depth of field. No camera \
moves, no cuts.
- lines: what is said, in order. Each entry is one sentence: the speaker (a short tag of about five words that \
describes them, the same tag for every line of the same person), the language (one of: {languages}), the emotion \
on their face, the voice (tone, pace, pitch, volume) and the exact words in that language's own script.
- background_sound: the most noticeable sound besides speech, or "" when there is none.

Write literally: no metaphors, no mood words without a visible sign, no story before or after the clip. The \
spoken words must be natural for the language and short enough to say in the clip's duration. Answer with the \
JSON object only."""


def _user_message(idea: str, portrait_description: str, language: str | None, seconds: float | None) -> str:
    parts = [f"Idea: {idea}"]
    if portrait_description:
        parts.append(f"Portrait description (the person must look like this): {portrait_description}")
    if language:
        parts.append(f"Spoken language: {language}")
    if seconds and seconds > MAX_SECONDS:
        parts.append(
            f"Clip duration: {seconds:g} seconds, one continuous static shot made in parts: write the lines to be "
            f"spoken one after another through the whole duration (at most {max_lines(seconds)} lines), together "
            f"comfortable to say in {seconds:g} seconds, each line one or two sentences."
        )
    elif seconds:
        parts.append(f"Clip duration: {seconds:g} seconds; all lines together must be comfortable to say in it.")
    return "\n".join(parts)


@dataclass(frozen=True)
class Enhanced:
    """An enhanced prompt, the structure it was written from, and the duration warning (None: it fits)."""

    prompt: str
    scene: Scene
    warning: str | None


def enhance(
    idea: str,
    *,
    portrait_description: str = "",
    language: str | None = None,
    seconds: float | None = None,
    config: EnhancerConfig | None = None,
    shorten: Enhanced | None = None,
) -> Enhanced:
    """A rough idea as a prompt, its lines fitting `seconds`. `shorten`: an earlier result to rewrite shorter. An
    invalid answer is sent back once to be repaired."""
    config = config or EnhancerConfig.from_env()
    if not config.enabled:
        raise EnhancerError(HOW_TO_ENABLE)
    idea = clean_text(idea or "")
    if not idea:
        raise ValueError("Write an idea first: who is on camera and what they say, in a sentence or two.")
    if len(idea) > MAX_IDEA_CHARS:
        raise ValueError(f"The idea has {len(idea)} characters; keep it under {MAX_IDEA_CHARS} (a rough idea).")
    if language:
        language = get_language(language).name
    if seconds is not None and not MIN_SECONDS <= seconds <= MAX_TAKE_SECONDS:
        raise ValueError(f"seconds must be from {MIN_SECONDS} to {MAX_TAKE_SECONDS}, not {seconds:g}")

    system = SYSTEM_PROMPT.format(languages=", ".join(LANGUAGE_NAMES))
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": _user_message(idea, clean_text(portrait_description or ""), language, seconds)},
    ]
    if shorten is not None:
        messages += [
            {"role": "assistant", "content": json.dumps(shorten.scene.as_dict(), ensure_ascii=False)},
            {"role": "user", "content": f"{shorten.warning or ''} Rewrite it with shorter lines; keep the rest."},
        ]
    scene = _ask(config, messages, max_lines(seconds))
    prompt = render(scene)
    if len(prompt) > REQUEST_LIMITS.max_prompt_chars:
        raise EnhancerError(
            f"the model wrote a prompt of {len(prompt)} characters, over the {REQUEST_LIMITS.max_prompt_chars} "
            "limit; try again or use another model"
        )
    return Enhanced(prompt, scene, duration_warning(scene, seconds) if seconds else None)


def _ask(config: EnhancerConfig, messages: list[dict], most_lines: int) -> Scene:
    with _client(config) as client:  # closes its connection pool when done
        content, structured = _complete(client, config, messages, structured=True)
        try:
            return parse_scene(content, most_lines)
        except ValueError as first:
            problem = str(first)
        repair = [
            *messages,
            {"role": "assistant", "content": (content or "")[:4000]},
            {"role": "user", "content": f"That answer cannot be used: {problem}. Reply with the corrected JSON only."},
        ]
        content, _ = _complete(client, config, repair, structured)
    try:
        return parse_scene(content, most_lines)
    except ValueError as second:
        raise EnhancerError(
            f"the model at {config.where} did not return the structure asked for, twice ({problem}; then "
            f"{second}); try again, or use a larger model or one that supports structured outputs"
        ) from None


def _client(config: EnhancerConfig):
    try:
        from openai import OpenAI
    except ImportError:
        raise EnhancerError("the prompt enhancer needs the openai package: pip install openai") from None
    # No retries: a retry would multiply the time the user waits past the timeout they set.
    return OpenAI(
        base_url=config.base_url,
        api_key=config.api_key or "not-needed",  # local servers ignore the key; the client requires one
        timeout=config.timeout_s,
        max_retries=0,
    )


def _complete(client, config: EnhancerConfig, messages: list[dict], structured: bool) -> tuple[str | None, bool]:
    """(the answer, whether structured outputs were used); plain JSON where json_schema gets a 400."""
    import openai

    schema_format = {"type": "json_schema", "json_schema": {"name": "scene", "schema": SCENE_SCHEMA, "strict": True}}
    plain = [{**messages[0], "content": messages[0]["content"] + _schema_hint()}, *messages[1:]]
    try:
        if structured:
            try:
                return _text(client, config, messages, schema_format), True
            except openai.BadRequestError:
                pass  # the endpoint does not take json_schema: ask in words instead
        return _text(client, config, plain, None), False
    except openai.APITimeoutError:
        raise EnhancerError(
            f"the enhancer at {config.where} did not answer within {config.timeout_s:g} s; try again, use a smaller "
            f"model, or allow more time with {TIMEOUT_ENV}"
        ) from None
    except openai.AuthenticationError:
        raise EnhancerError(f"the enhancer at {config.where} refused the API key (401): check {API_KEY_ENV}") from None
    except openai.PermissionDeniedError:
        raise EnhancerError(
            f"the enhancer at {config.where} refused access (403): check that {API_KEY_ENV} may use this model"
        ) from None
    except openai.NotFoundError:
        raise EnhancerError(
            f"the enhancer at {config.where} answered 404: check the model name ({MODEL_ENV}) and that "
            f"{BASE_URL_ENV} points at the API root (it usually ends in /v1)"
        ) from None
    except openai.RateLimitError:
        raise EnhancerError(f"the enhancer at {config.where} is rate-limited or out of quota (429)") from None
    except openai.APIConnectionError:
        raise EnhancerError(
            f"could not connect to the enhancer at {config.where}: is the server running, and is {BASE_URL_ENV} right?"
        ) from None
    except openai.APIStatusError as exc:
        raise EnhancerError(f"the enhancer at {config.where} answered HTTP {exc.status_code}: {exc.message}") from None


def _text(client, config: EnhancerConfig, messages: list[dict], response_format: dict | None) -> str | None:
    extra = {"response_format": response_format} if response_format else {}
    completion = client.chat.completions.create(
        model=config.model, messages=messages, max_tokens=MAX_ANSWER_TOKENS, **extra
    )
    if not completion.choices:
        return None
    message = completion.choices[0].message
    refusal = getattr(message, "refusal", None)
    if refusal:
        raise EnhancerError(f"the model at {config.where} declined this idea: {refusal}")
    return message.content


def _schema_hint() -> str:
    return "\n\nThe JSON object must match this JSON schema:\n" + json.dumps(SCENE_SCHEMA, ensure_ascii=False)


# --- Command line: python -m magihuman enhance "idea" ----------------------------------------------------


def add_enhance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("idea", help="a rough idea: who is on camera and what they say")
    parser.add_argument("--language", choices=LANGUAGE_NAMES, help="the spoken language (default: the LLM's choice)")
    parser.add_argument(
        "--seconds", type=float, help=f"clip duration the lines must fit ({MIN_SECONDS}-{MAX_TAKE_SECONDS})"
    )
    parser.add_argument("--portrait-description", default="", help="what the portrait shows, to keep the look")
    parser.add_argument("--enhancer-model", help=f"the chat model to use (default: ${MODEL_ENV})")
    parser.add_argument("--json", action="store_true", help="print the structure as JSON after the prompt")


def run_enhance(args: argparse.Namespace) -> None:
    """Print the enhanced prompt (stdout), the duration warning (stderr) and, with --json, the structure."""
    try:
        result = enhance(
            args.idea,
            portrait_description=args.portrait_description,
            language=args.language,
            seconds=args.seconds,
            config=EnhancerConfig.from_env(args.enhancer_model),
        )
    except ValueError as exc:
        raise EnhancerError(str(exc)) from None
    print(result.prompt)
    if args.json:
        print(json.dumps(result.scene.as_dict(), ensure_ascii=False, indent=2))
    if result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
