"""`python -m magihuman.eval`: the shipped prompt set parses and covers what it promises; one tiny take goes
through generation, scoring and the per-language table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from magihuman import eval as evaluation
from magihuman.errors import MagiHumanError
from magihuman.prompts import LANGUAGE_NAMES, parse_prompt


def test_the_shipped_prompts_cover_every_language_one_and_two_speakers_with_and_without_portrait() -> None:
    requests = evaluation.read_prompts(evaluation.DEFAULT_PROMPTS)
    dialogues = [parse_prompt(r.prompt)[1] for r in requests]
    assert {line.language for lines in dialogues for line in lines} == set(LANGUAGE_NAMES)
    assert {len(lines) for lines in dialogues} == {1, 2}
    portraits = {r.portrait for r in requests}
    assert None in portraits and all(Path(p).is_file() for p in portraits if p)
    assert len({r.seed for r in requests}) > 1


def test_a_malformed_entry_is_named(tmp_path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hi.", "seeds": [1]}\n{"prompt": "Hi.", "colour": "red"}\n')
    with pytest.raises(MagiHumanError, match="line 2.*colour"):
        evaluation.read_prompts(prompts)


def test_eval_generates_scores_and_tabulates(tiny_engine, tmp_path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    line = 'A man speaks.\n\nDialogue:\n<The man, German>: "Guten Tag."\n\nBackground Sound:\n<None>'
    prompts.write_text(json.dumps({"prompt": line, "seeds": [3, 4], "seconds": 1, "steps": 2}) + "\n")
    table = evaluation.evaluate(tiny_engine, evaluation.read_prompts(prompts), tmp_path / "out")
    assert "| German | 2 |" in table and "scores of noise" in table
    assert (tmp_path / "out" / "table.md").read_text().strip() == table
    cards = [json.loads(line) for line in (tmp_path / "out" / "cards.jsonl").read_text().splitlines()]
    assert [c["clip"] for c in cards] == ["000_seed3.mp4", "001_seed4.mp4"]
    assert all(c["requested_language"] == "German" and c["video_seconds"] > 0.9 for c in cards)
    assert all((tmp_path / "out" / "clips" / c["clip"]).is_file() for c in cards)


def test_the_command_refuses_a_malformed_file(tmp_path, capsys) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("not json\n")
    assert evaluation.main(["--prompts", str(prompts), "--out", str(tmp_path / "out")]) == 2
    assert "prompts.jsonl line 1" in capsys.readouterr().err
