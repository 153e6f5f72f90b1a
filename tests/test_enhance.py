"""The prompt enhancer against a real local HTTP server speaking the chat-completions API (tests/chat_server.py),
through the official openai client: the official format, languages and CJK spacing, structured outputs and the
plain-JSON fallback, the repair attempt, and every error a user can meet."""

from __future__ import annotations

import json

import pytest

from magihuman.__main__ import main as cli_main
from magihuman.enhance import (
    HOW_TO_ENABLE,
    MODEL_ENV,
    EnhancerConfig,
    EnhancerError,
    enhance,
    parse_scene,
)
from magihuman.prompts import parse_prompt
from tests.chat_server import Stall, chat_server

LINE = "We open at seven, and the first croissant is on the house."


def scene_json(**overrides) -> str:
    line = {
        "speaker": "Woman in green linen apron",
        "language": "English",
        "emotion": "quietly proud",
        "voice": "bright, unhurried, mid-pitched",
        "text": LINE,
    }
    scene = {
        "appearance": "A woman in her early thirties with curly auburn hair and a green linen apron",
        "setting": "She stands behind a wooden café counter in soft morning daylight",
        "performance": "Her cheeks rise into a smile before she speaks; her jaw moves in small, even steps",
        "camera": "Static medium close-up at eye level, shallow depth of field",
        "lines": [line],
        "background_sound": "Quiet café ambience",
    }
    lines = overrides.pop("lines", None)
    if lines is not None:
        scene["lines"] = [{**line, **changes} for changes in lines]
    return json.dumps({**scene, **overrides}, ensure_ascii=False)


@pytest.fixture
def server():
    with chat_server() as running:
        yield running


def config(server, timeout_s: float = 10.0) -> EnhancerConfig:
    return EnhancerConfig(model="test-model", base_url=server.url, api_key="sk-test", timeout_s=timeout_s)


def test_an_idea_becomes_a_prompt_in_the_official_format(server) -> None:
    server.replies = [scene_json()]
    result = enhance("a baker says the shop opens at seven", language="English", seconds=5, config=config(server))

    body, lines, background = parse_prompt(result.prompt)
    assert [(ln.speaker, ln.language, ln.text) for ln in lines] == [("Woman in green linen apron", "English", LINE)]
    assert background == "Quiet café ambience"
    assert result.prompt.count(f'"{LINE}"') == 2  # inline in the body and in the Dialogue block
    assert "The woman in green linen apron, quietly proud, says in a bright, unhurried, mid-pitched voice" in body
    assert body.startswith("A woman in her early thirties") and body.endswith("shallow depth of field.")
    assert result.warning is None

    request = server.requests[0]
    assert request["model"] == "test-model"
    schema = request["response_format"]["json_schema"]
    assert request["response_format"]["type"] == "json_schema" and schema["strict"] is True
    assert "English" in schema["schema"]["properties"]["lines"]["items"]["properties"]["language"]["enum"]
    user = request["messages"][-1]["content"]
    assert "a baker says" in user and "Spoken language: English" in user and "5 seconds" in user


def test_cjk_lines_are_spaced_and_tagged_with_their_language(server) -> None:
    teacher = {"speaker": "Elderly man in glasses", "language": "mandarin", "text": "慢一点，心要正。"}
    server.replies = [scene_json(lines=[teacher])]
    result = enhance("a calligraphy teacher's advice", language="Mandarin", config=config(server))
    assert '<Elderly man in glasses, Mandarin>: "慢 一 点，心 要 正。"' in result.prompt
    assert result.prompt.count('"慢 一 点，心 要 正。"') == 2


def test_without_structured_outputs_plain_json_is_asked_for(server) -> None:
    server.replies = [(400, "response_format json_schema is not supported"), scene_json()]
    result = enhance("a baker", config=config(server))
    assert f'"{LINE}"' in result.prompt
    fallback = server.requests[1]
    assert "response_format" not in fallback
    assert '"background_sound"' in fallback["messages"][0]["content"]  # the schema, in words


def test_an_invalid_answer_is_repaired_once(server) -> None:
    server.replies = ["Sure! Here is your scene: {appearance: ...", f"```json\n{scene_json()}\n```"]
    result = enhance("a baker", config=config(server))
    assert f'"{LINE}"' in result.prompt
    repair = server.requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! Here is your scene: {appearance: ..."}
    assert "not valid JSON" in repair[-1]["content"]


def test_invalid_twice_is_a_clear_error(server) -> None:
    server.replies = ["not json", scene_json(lines=[{"language": "Klingon"}])]
    with pytest.raises(EnhancerError, match=r"(?s)twice.*not valid JSON.*unknown language 'Klingon'"):
        enhance("a baker", config=config(server))
    assert len(server.requests) == 2


def test_a_slow_endpoint_is_a_timeout_error(server) -> None:
    server.replies = [Stall(10)]
    with pytest.raises(EnhancerError, match=r"did not answer within 0\.5 s"):
        enhance("a baker", config=config(server, timeout_s=0.5))


def test_endpoint_errors_say_what_to_check(server) -> None:
    server.replies = [(401, "Incorrect API key provided")]
    with pytest.raises(EnhancerError, match="refused the API key.*OPENAI_API_KEY"):
        enhance("a baker", config=config(server))
    server.replies = [(404, "model 'test-model' not found")]
    with pytest.raises(EnhancerError, match="404.*MAGIHUMAN_ENHANCER_MODEL"):
        enhance("a baker", config=config(server))
    closed = EnhancerConfig(model="m", base_url="http://127.0.0.1:9/v1", timeout_s=5)
    with pytest.raises(EnhancerError, match="could not connect"):
        enhance("a baker", config=closed)


def test_not_configured_explains_how_to_enable() -> None:
    off = EnhancerConfig.from_env(environ={})
    assert not off.enabled
    with pytest.raises(EnhancerError) as caught:
        enhance("a baker", config=off)
    assert str(caught.value) == HOW_TO_ENABLE and "OPENAI_BASE_URL" in HOW_TO_ENABLE and MODEL_ENV in HOW_TO_ENABLE
    local = EnhancerConfig.from_env(environ={"OPENAI_BASE_URL": "http://localhost:11434/v1", MODEL_ENV: "qwen3"})
    assert local.enabled and local.api_key is None
    hosted = EnhancerConfig.from_env("flag-model", environ={"OPENAI_API_KEY": "k", MODEL_ENV: "env"})
    assert hosted.enabled and hosted.model == "flag-model" and hosted.base_url is None


def test_lines_too_long_for_the_clip_warn_and_can_be_shortened(server) -> None:
    long_line = "This is a very long line that goes on and on about the croissants and the coffee and the weather."
    server.replies = [scene_json(lines=[{"text": long_line}]), scene_json()]
    first = enhance("a baker", seconds=2, config=config(server))
    assert first.warning is not None and "the clip is 2 s" in first.warning
    shorter = enhance("a baker", seconds=5, config=config(server), shorten=first)
    assert shorter.warning is None
    asked = server.requests[1]["messages"]
    assert long_line in asked[-2]["content"] and "shorter lines" in asked[-1]["content"]


def test_parse_scene_refuses_what_the_prompt_cannot_use() -> None:
    for content, message in [
        ("", "empty"),
        ("[1, 2]", "one JSON object"),
        (scene_json(lines=[]), "non-empty array"),
        (scene_json(camera=""), 'non-empty string "camera"'),
        (scene_json(lines=[{"text": "a"}] * 7), "at most 6"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_scene(content)


def test_the_cli_prints_the_enhanced_prompt(server, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.replies = [scene_json()]
    assert cli_main(["enhance", "a baker", "--language", "English", "--seconds", "4", "--enhancer-model", "m"]) == 0
    out = capsys.readouterr()
    assert f'<Woman in green linen apron, English>: "{LINE}"' in out.out
    assert server.requests[0]["model"] == "m"
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert cli_main(["enhance", "a baker"]) == 2
    assert "enhancer is off" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# The studio: /enhance (API and MCP tool) and the review panel's diff
# ---------------------------------------------------------------------------------------------------------


def test_the_studio_enhances_through_its_api_and_mcp_tool(tiny_engine, server, monkeypatch) -> None:
    pytest.importorskip("mcp")
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    import app as studio_app
    from studio.runtime import EngineSlot
    from tests.studio import launched

    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", MODEL_ENV):
        monkeypatch.delenv(name, raising=False)
    demo = studio_app.build_demo(EngineSlot.ready(tiny_engine))
    with launched(demo, show_error=True, mcp_server=True) as url:
        client = Client(url, verbose=False, download_files=False)
        with pytest.raises(AppError, match="enhancer is off.*OPENAI_BASE_URL"):
            client.predict(idea="a baker", api_name="/enhance")

        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv(MODEL_ENV, "studio-model")
        server.replies = [scene_json(lines=[{"text": "Bonjour, entrez donc !", "language": "French"}])]
        prompt, structure, warning = client.predict(
            idea="a baker greets me", language="French", seconds=3, api_name="/enhance"
        )
        assert '<Woman in green linen apron, French>: "Bonjour, entrez donc !"' in prompt
        assert structure["lines"][0]["language"] == "French" and warning == ""
        assert "Spoken language: French" in server.requests[-1]["messages"][-1]["content"]

        tools = httpx.get(url + "gradio_api/mcp/schema", timeout=30).json()
    tool = next(tool for tool in tools if tool["name"] == "enhance_prompt")
    assert list(tool["inputSchema"]["properties"]) == ["idea", "language", "seconds", "portrait_description"]
    assert "official format" in tool["description"]


def test_the_review_shows_word_changes_against_the_idea() -> None:
    from studio.enhance import diff_tokens

    pieces = diff_tokens("a baker says hi", "A baker says hello.\n\nDialogue:")
    assert "".join(text for text, label in pieces if label != "removed") == "A baker says hello.\n\nDialogue:"
    assert "".join(text for text, label in pieces if label != "added") == "a baker says hi"
    assert pieces[0] == ("a baker says hi", "removed")  # " baker says " is two words: too few to show as kept
    kept = diff_tokens("a woman in a red coat waves", "A woman in a red coat smiles and waves.")
    assert (" woman in a red coat ", None) in kept and ("waves", "removed") in kept


def test_the_shorten_button_sends_the_scene_back_with_the_warning(server, monkeypatch) -> None:
    from studio.enhance import enhance_prompt, shorten_lines

    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv(MODEL_ENV, "m")
    long_line = "This line goes on and on about the croissants, the coffee, the weather and the neighbours."
    server.replies = [scene_json(lines=[{"text": long_line}]), scene_json()]
    prompt, structure, warning = enhance_prompt("a baker", "English", 2)
    assert warning.startswith("⚠️ The dialogue needs about")
    prompt, structure, warning = shorten_lines("a baker", "English", 5, "", structure, warning)
    assert warning == "" and f'"{LINE}"' in prompt
    assert "needs about" in server.requests[1]["messages"][-1]["content"]
    with pytest.raises(Exception, match="Enhance the prompt first"):
        shorten_lines("a baker", "English", 5, "", None, "")
