"""Per-window prompts of a long take with generated speech.

Given whole to every window, a shot's prompt would start the speech again in each. So the description stays
(the appearance must not change) and the dialogue is split at sentence ends, each sentence going to the windows
its estimated time falls in. Prompts the estimate cannot read are left whole.
"""

from __future__ import annotations

import re

from magihuman.config import FPS
from magihuman.prompts import TURN_GAP_S, DialogueLine, build_prompt, estimate_speech_seconds, parse_prompt

_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])")


def sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_BREAK.split(text) if part.strip()]


def split_dialogue(prompt: str, spans: list[tuple[int, int]]) -> list[str]:
    """One prompt per window of a shot; `spans` are each window's kept frames [first, stop) from the shot's
    start. Returns `prompt` for every window when there is nothing to split."""
    description, lines, background = parse_prompt(prompt)
    if len(spans) < 2 or not lines:
        return [prompt] * len(spans)
    try:
        timed, clock = [], 0.0
        for line in lines:
            for sentence in sentences(line.text):
                seconds = estimate_speech_seconds(sentence, line.language)
                timed.append((clock, clock + seconds, DialogueLine(line.speaker, line.language, sentence)))
                clock += seconds
            clock += TURN_GAP_S
        # The description quotes each line as build_prompt wrote it; without them, each window quotes its own.
        for line in lines:
            description = description.replace(_inline(line), "").strip()
        per_window = []
        for first, stop in spans:
            start_s, stop_s = first / FPS, stop / FPS
            own = [line for begin, end, line in timed if begin < stop_s and end > start_s]
            if first == spans[-1][0]:  # the last window also says whatever the estimate ran past
                own += [line for begin, _, line in timed if begin >= stop_s and line not in own]
            per_window.append(build_prompt(description, _merged(own), background))
    except ValueError:  # a language outside the model's list: leave the prompt whole
        return [prompt] * len(spans)
    return per_window


def _inline(line: DialogueLine) -> str:
    """The inline quote build_prompt writes for `line` (found in the body by building it alone)."""
    body = build_prompt("", [line], None).split("\n\n")[0]
    return body


def _merged(lines: list[DialogueLine]) -> list[DialogueLine]:
    """Consecutive sentences of one speaker as one line again."""
    merged: list[DialogueLine] = []
    for line in lines:
        if merged and (merged[-1].speaker, merged[-1].language) == (line.speaker, line.language):
            merged[-1] = DialogueLine(line.speaker, line.language, f"{merged[-1].text} {line.text}")
        else:
            merged.append(line)
    return merged
