"""`tuneforge templates list|show|render` through the Typer app."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tuneforge.templates.cli import app

runner = CliRunner()


def _records(path: Path) -> Path:
    rows = [
        {"id": "r1", "kind": "messages", "meta": {}, "messages": [
            {"role": "user", "content": "北京有什么景点？"}, {"role": "assistant", "content": "故宫。"},
            {"role": "user", "content": "门票呢？"}, {"role": "assistant", "content": "60元。"}]},
        {"id": "r2", "kind": "text", "meta": {}, "text": "no conversation here"},
        {"id": "r3", "kind": "preference", "meta": {}, "prompt": [{"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello!"}], "rejected": [{"role": "assistant", "content": "Go"}]},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_list_and_show() -> None:
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0, res.output
    for name in ("chatml", "qwen", "alpaca", "chatglm", "chatglm2", "chatglm3", "llama2", "llama3", "vicuna",
                 "human_assistant", "tokenizer"):
        assert f"\n{name} " in "\n" + res.output
    res = runner.invoke(app, ["show", "chatglm3"])
    assert res.exit_code == 0, res.output
    assert "[gMASK]sop" in res.output and '"</s>"' in res.output
    assert "<|assistant|>⟦\n四。</s>⟧" in res.output
    res = runner.invoke(app, ["show", "qwen", "--hf"])
    assert res.output.startswith('{%- set default_system = "You are a helpful assistant." -%}')


def test_render_marks_trained_part(tmp_path: Path) -> None:
    path = _records(tmp_path / "d.jsonl")
    res = runner.invoke(app, ["render", "chatglm", str(path), "-n", "5"])
    assert res.exit_code == 0, res.output
    assert "[Round 0]\n问：北京有什么景点？\n答：⟦故宫。<eop>⟧\n[Round 1]\n问：门票呢？\n答：⟦60元。<eop>⟧" in res.output
    assert "答：⟦Hello!<eop>⟧" in res.output  # preference records render prompt + chosen
    assert "no conversation here" not in res.output
    res = runner.invoke(app, ["render", "chatglm", str(path), "-n", "1", "--train-on", "last"])
    assert "答：故宫。<eop>\n[Round 1]" in res.output and "⟦60元。<eop>⟧" in res.output


def test_render_with_tokenizer_marks_tokens(tmp_path: Path, smollm2_path: Path) -> None:
    path = _records(tmp_path / "d.jsonl")
    res = runner.invoke(app, ["render", "chatml", str(path), "--tokenizer", str(smollm2_path), "-n", "1"])
    assert res.exit_code == 0, res.output
    assert "<|im_start|>assistant\n⟦故宫。<|im_end|>⟧\n<|im_start|>user" in res.output
    assert "tokens," in res.output and "trained" in res.output


def test_render_errors(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text('{"text": "x"}\n', encoding="utf-8")
    res = runner.invoke(app, ["render", "chatml", str(empty)])
    assert res.exit_code != 0 and "no record with a `messages` list" in str(res.exception)
    res = runner.invoke(app, ["render", "tokenizer", str(empty)])
    assert "needs --tokenizer" in str(res.exception)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"messages": [}\n', encoding="utf-8")
    res = runner.invoke(app, ["render", "chatml", str(bad)])
    assert "b.jsonl:1: not valid JSON" in str(res.exception)
