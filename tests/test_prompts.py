"""Prompt building: CJK spacing, the official block layout, clean-up, length warnings and the examples."""

from __future__ import annotations

import pytest

from magihuman.config import MAX_SECONDS
from magihuman.prompts import (
    EXAMPLE_PROMPTS,
    EXAMPLES,
    LANGUAGE_NAMES,
    LANGUAGES,
    DialogueLine,
    build_prompt,
    clean_text,
    estimate_speech_seconds,
    get_language,
    line_length_warning,
    parse_prompt,
    prompt_length_warning,
    space_cjk,
)
from magihuman.take_plan import MAX_TAKE_SECONDS

# ---------------------------------------------------------------------------------------------------------
# Languages and CJK spacing
# ---------------------------------------------------------------------------------------------------------


def test_languages_are_the_seven_supported():
    assert LANGUAGE_NAMES == ("Mandarin", "Cantonese", "English", "Japanese", "Korean", "German", "French")
    assert {lang.name for lang in LANGUAGES if lang.cjk_spaced} == {"Mandarin", "Cantonese", "Japanese", "Korean"}
    assert all(2.0 < lang.units_per_second < 8.0 for lang in LANGUAGES)
    assert get_language(" korean ").name == "Korean"


@pytest.mark.parametrize(
    ("raw", "spaced"),
    [
        (
            "有的人在一起生活一辈子，还带着假面具呢",
            "有 的 人 在 一 起 生 活 一 辈 子，还 带 着 假 面 具 呢",
        ),  # official example
        ("ようこそ、カタカナー！", "よ う こ そ、カ タ カ ナ ー！"),
        ("안녕하세요 여러분", "안 녕 하 세 요 여 러 분"),
        ("我用iPhone拍了3张照片😀好看", "我 用 iPhone 拍 了 3 张 照 片 😀 好 看"),
        ("他说「你好」。OK?", "他 说「你 好」。OK?"),
        ("Hello, world!  No CJK here.", "Hello, world! No CJK here."),
        ("  你\u3000好\n\n吗  ", "你 好 吗"),
        ("", ""),
    ],
)
def test_space_cjk(raw, spaced):
    assert space_cjk(raw) == spaced
    assert space_cjk(spaced) == spaced  # idempotent
    assert "  " not in space_cjk(raw)


def test_space_cjk_keeps_emoji_sequences_whole():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl
    assert space_cjk(f"我们{family}家") == f"我 们 {family} 家"


def test_clean_text_strips_controls_and_invisibles():
    assert clean_text("a\x00b\x07c\u200bd\u202ee\ufefff\tg\r\nh") == "abcdef g h"
    assert clean_text("\u1100\u1161") == "가"  # decomposed Hangul is composed (NFC)


# ---------------------------------------------------------------------------------------------------------
# Assembling and parsing
# ---------------------------------------------------------------------------------------------------------


def test_build_prompt_layout_and_each_line_twice():
    lines = [
        DialogueLine("Young woman in red coat", "English", "Is it raining again?"),
        DialogueLine("Old man with umbrella", "Mandarin", "是啊，下了一整天。"),
    ]
    prompt = build_prompt("Two people stand at a bus stop, static camera, overcast light", lines, "Steady rain")
    assert prompt.count('"Is it raining again?"') == 2
    assert prompt.count('"是 啊，下 了 一 整 天。"') == 2
    assert "下了" not in prompt  # CJK spaced in both places
    body, dialogue, background = prompt.split("\n\n")
    assert body.startswith("Two people stand at a bus stop, static camera, overcast light. The young woman in red")
    assert 'The old man with umbrella says: "是 啊' in body
    assert dialogue.splitlines() == [
        "Dialogue:",
        '<Young woman in red coat, English>: "Is it raining again?"',
        '<Old man with umbrella, Mandarin>: "是 啊，下 了 一 整 天。"',
    ]
    assert background == "Background Sound:\n<Steady rain>"


def test_build_prompt_does_not_repeat_a_line_the_description_quotes():
    line = DialogueLine("Woman", "Japanese", "ありがとう")
    prompt = build_prompt("A woman smiles and says, “ありがとう” softly.", [line], None)
    assert prompt.count('"あ り が と う"') == 2
    assert "says:" not in prompt
    assert prompt.endswith("Background Sound:\n<No prominent background sound>")


def test_build_prompt_names_and_quotes():
    prompt = build_prompt("", [DialogueLine("Marie Curie", "French", '"Rien n\'est à craindre"')], "<Wind>")
    assert prompt.startswith('Marie Curie says: "Rien n\'est à craindre".')
    assert prompt.count('"Rien n\'est à craindre"') == 2
    assert prompt.endswith("<Wind>")
    inner = build_prompt("x", [DialogueLine("", "English", 'She said "no"')], None)
    assert "<Speaker, English>: \"She said 'no'\"" in inner


def test_build_prompt_strips_controls_and_skips_empty_lines():
    lines = [DialogueLine("Man\x00", "German", "Guten\x07 Tag\n\n  zusammen"), DialogueLine("Man", "German", "  ")]
    prompt = build_prompt("A man\x1b[31m waves.\r\n", lines, None)
    assert "\x00" not in prompt and "\x07" not in prompt and "\x1b" not in prompt
    assert prompt.count('"Guten Tag zusammen"') == 2
    assert prompt.count("<Man, German>") == 1
    no_lines = build_prompt("A quiet room.", [], None)
    assert "Dialogue:" not in no_lines and no_lines.startswith("A quiet room.\n\nBackground Sound:")


def test_unknown_language_is_rejected_with_the_options():
    with pytest.raises(ValueError, match="Klingon.*Mandarin, Cantonese, English, Japanese, Korean, German, French"):
        build_prompt("x", [DialogueLine("Worf", "Klingon", "Qapla'")], None)


def test_parse_prompt_round_trips():
    lines = [DialogueLine("Girl in school uniform", "Korean", "내일 봐!"), DialogueLine("Boy", "English", "Bye.")]
    prompt = build_prompt("Two students wave goodbye.", lines, "Cicadas")
    description, parsed, background = parse_prompt(prompt)
    assert [(line.speaker, line.language) for line in parsed] == [
        ("Girl in school uniform", "Korean"),
        ("Boy", "English"),
    ]
    assert parsed[0].text == "내 일 봐!" and background == "Cicadas"
    assert build_prompt(description, parsed, background) == prompt
    assert parse_prompt("Just a description.") == ("Just a description.", [], None)


# ---------------------------------------------------------------------------------------------------------
# Length warnings
# ---------------------------------------------------------------------------------------------------------


def test_estimates_scale_with_text_and_rate():
    assert estimate_speech_seconds("", "English") == 0.0
    short = estimate_speech_seconds("Hello there.", "English")
    assert 0.4 < short < 1.5
    assert estimate_speech_seconds("Hello there. " * 4, "English") > 3 * short
    assert estimate_speech_seconds("你好世界", "Mandarin") == pytest.approx(4 / 4.5)
    assert estimate_speech_seconds("你 好 世 界", "Mandarin") == estimate_speech_seconds("你好世界", "Mandarin")
    with pytest.raises(ValueError):
        estimate_speech_seconds("hi", "Elvish")


def test_line_length_warning():
    short = [DialogueLine("Woman", "English", "Good morning, everyone.")]
    assert line_length_warning(short, 5) is None
    assert line_length_warning([DialogueLine("Woman", "English", "  ")], 1) is None
    assert line_length_warning([], 1) is None
    long_text = "We have spent the last three years building this little shop, and every single morning we bake. " * 2
    warning = line_length_warning([DialogueLine("Woman", "English", long_text)], 5)
    assert warning is not None and "the clip is 5 s" in warning and "raise the duration" in warning
    assert "raise the duration" in line_length_warning([DialogueLine("W", "English", long_text * 3)], MAX_SECONDS)
    at_most = line_length_warning([DialogueLine("W", "English", long_text * 10)], MAX_TAKE_SECONDS)
    assert "raise the duration" not in at_most and f"at most {MAX_TAKE_SECONDS} s" in at_most
    many = [DialogueLine("Man", "Mandarin", "我们今天一起去公园散步吧。")] * 4
    assert "shorten the lines" in line_length_warning(many, 5)


def test_prompt_length_warning():
    assert prompt_length_warning("short prompt", count_tokens=lambda p: 10) is None
    assert "640" in prompt_length_warning("short prompt", count_tokens=lambda p: 700)
    assert "limit" in prompt_length_warning("x" * 5000)


# ---------------------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------------------


def test_examples_are_complete_and_parse_back():
    assert 4 <= len(EXAMPLE_PROMPTS) == len(EXAMPLES) <= 6
    assert {"English", "Mandarin", "German", "French"} <= {example.language for example in EXAMPLES}
    assert {"Japanese", "Korean"} & {example.language for example in EXAMPLES}
    for example, prompt in zip(EXAMPLES, EXAMPLE_PROMPTS, strict=True):
        assert prompt.index("\n\nDialogue:\n") < prompt.index("\n\nBackground Sound:\n")
        description, lines, background = parse_prompt(prompt)
        assert len(lines) == 1 and lines[0].language in LANGUAGE_NAMES
        assert prompt.count(f'"{lines[0].text}"') == 2
        assert lines[0].text == space_cjk(example.line)
        assert "says:" not in description  # the description quotes its own line
        assert background == example.background
        assert line_length_warning([DialogueLine(example.speaker, example.language, example.line)], 5) is None
        assert len(description.split()) >= 60
