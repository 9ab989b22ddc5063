"""The docs cannot drift from the code: every fenced example in README.md and docs/*.md is checked.

- `tuneforge ...` command lines (bash blocks, optional `[...]` groups included): the command exists, and
  every `--flag` it shows is one of that command's options; repository files it names exist.
- YAML blocks: each parses with yaml.safe_load and validates against the schema it documents (a recipe or a
  recipe's `clean:`/`augment:` section, a training config, an eval config section, a pipeline, a search
  block, a chat template declaration).
- Python blocks: each compiles, and every name it imports from tuneforge exists.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1) == lang or (lang == "bash" and not m.group(1) and "tuneforge " in m.group(2)):
                line = text[: m.start()].count("\n") + 1
                out.append((f"{doc.relative_to(REPO)}:{line}", m.group(2)))
    return out


def _command_lines(body: str) -> list[str]:
    """`tuneforge ...` lines, continuation backslashes joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    lines = []
    for raw in joined.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line.startswith("#"):
            continue
        line = line.split("tuneforge ", 1)[1] if "tuneforge " in line and not line.startswith(
            ("accelerate", "export", "bash", "pip")) else None
        if line:
            lines.append(line)
    return lines


def _click():
    import typer

    from tuneforge.cli import app

    return typer.main.get_command(app)


def _resolve(group, words: list[str]):
    cmd, rest = group, list(words)
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    return cmd, rest


CASES = [(where, line) for where, body in _blocks("bash") for line in _command_lines(body)]


@pytest.mark.parametrize(("where", "line"), CASES, ids=[f"{w}:{i}" for i, (w, _) in enumerate(CASES)])
def test_documented_commands_exist_with_their_flags(where, line):
    words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))
    cmd, rest = _resolve(_click(), words)
    assert not hasattr(cmd, "commands") or not rest or rest[0].startswith("-"), \
        f"{where}: `tuneforge {line}`: no command {rest[0]!r}"
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    flags = {w.split("=", 1)[0] for w in rest if w.startswith("--")}
    unknown = sorted(flags - known)
    assert not unknown, f"{where}: `tuneforge {line}`: {cmd.name} has no option {', '.join(unknown)}"
    for w in rest:
        if re.match(r"^(configs|pipelines|datasets)/[\w./-]+\.(ya?ml|jsonl?)$", w):
            assert (REPO / w).is_file(), f"{where}: names {w}, which is not in the repository"


def test_every_documented_runner_default_is_the_code_s():
    """The README and orchestration docs name the build's default runner as the CLI has it."""
    build = _click().commands["build"]
    default = next(p.default for p in build.params if p.name == "runner")
    for doc in (REPO / "README.md", REPO / "docs/orchestration.md"):
        text = " ".join(doc.read_text(encoding="utf-8").split())
        for m in re.finditer(r"`--runner (\w+)`[^.]{0,40}\bthe default\b|the default[^.]{0,20}`--runner (\w+)`", text):
            named = m.group(1) or m.group(2)
            assert named == default, f"{doc.name} calls --runner {named} the default; the code's is {default}"


def _validate_yaml(where: str, data: dict) -> str:
    """Validate one documented YAML block against the schema it shows; returns what it was taken for."""
    from tuneforge.recipe import Recipe

    keys = set(data)
    if "sources" in keys or keys <= {"clean", "augment", "split", "formats", "card", "dedup", "exclude"}:
        recipe = {"name": "doc", "sources": [{"name": "x", "path": "x.jsonl"}], **data}  # a fragment: fill the rest
        Recipe.model_validate(recipe)
        return "recipe"
    if {"name", "build"} <= keys:
        from tuneforge.pipeline.config import PipelineConfig

        PipelineConfig.model_validate(data)
        return "pipeline"
    if keys == {"search"}:
        from tuneforge.pipeline.search_config import SearchSpec

        SearchSpec.model_validate(data["search"])
        return "search"
    if "stage" in keys or "base_model" in keys or keys <= {"attn_implementation", "args"}:
        from tuneforge.trainers.config import TrainConfig

        # A reference listing every stage's block validates each block under its own stage.
        blocks = {b: {"ppo": "ppo", "grpo": "grpo", "kto": "kto", "orpo": "orpo", "simpo": "simpo"}[b]
                  for b in ("ppo", "grpo", "kto", "orpo", "simpo") if b in data}
        common = {k: v for k, v in data.items() if k not in blocks}
        for block, stage in blocks.items() if len(blocks) > 1 else []:
            TrainConfig.model_validate({"dataset": "x", **common, "stage": stage, block: data[block]})
        TrainConfig.model_validate({"dataset": "x", "stage": "sft", **(common if len(blocks) > 1 else data)})
        return "train config"
    from tuneforge.eval.config import EvalConfig

    if keys <= set(EvalConfig.model_fields):
        EvalConfig.model_validate(data)
        return "eval config"
    if {"name", "template"} <= keys:
        from dataclasses import fields

        from tuneforge.templates import Declaration

        unknown = keys - {f.name for f in fields(Declaration)}
        assert not unknown, f"{where}: a template declaration has no field(s) {sorted(unknown)}"
        Declaration(**data)
        return "template declaration"
    raise AssertionError(f"{where}: a YAML example of no known kind (keys {sorted(keys)}); teach this test")


YAML = _blocks("yaml")


@pytest.mark.parametrize(("where", "body"), YAML, ids=[w for w, _ in YAML])
def test_documented_yaml_validates(where, body):
    data = yaml.safe_load(body)
    assert isinstance(data, dict), f"{where}: not a mapping"
    _validate_yaml(where, data)


PY = _blocks("python")


@pytest.mark.parametrize(("where", "body"), PY, ids=[w for w, _ in PY])
def test_documented_python_imports_exist(where, body):
    tree = ast.parse(body, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tuneforge"):
            mod = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(mod, alias.name), f"{where}: {node.module} has no {alias.name}"


def test_the_shipped_configs_validate():
    """Every config, pipeline and recipe the repository ships loads with its paths checked."""
    from tuneforge.common.config import read_yaml_mapping
    from tuneforge.recipe import load_recipe

    for recipe in sorted(REPO.glob("datasets/*/recipe.yaml")):
        if recipe.parent.name != "_template":
            load_recipe(recipe)
    for cfg in sorted(REPO.glob("configs/*.yaml")):
        kind = _validate_yaml(str(cfg), read_yaml_mapping(cfg, "config"))
        assert kind in {"train config", "eval config"}, f"{cfg}: {kind}"


def test_documented_build_options_are_build_s_parameters(tmp_path):
    """python-api.md's list of `build` options is the signature of `tuneforge.builder.build`, and `strict`
    does what it says."""
    import inspect

    from tuneforge import StrictError
    from tuneforge.builder import build

    text = " ".join((REPO / "docs/python-api.md").read_text(encoding="utf-8").split())
    listed = re.search(r"`build` takes the options of `tuneforge build`: (.*?)\. The output", text).group(1)
    while "(" in listed:  # drop the parenthesised notes (the runner names, the executor example)
        listed = re.sub(r"\([^()]*\)", "", listed)
    names = re.findall(r"`(\w+)`", listed)
    params = set(inspect.signature(build).parameters) - {"recipe", "out"}
    assert set(names) == params, f"documented {sorted(names)} vs build's {sorted(params)}"
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "你好", "output": "你好！"}\n{"instruction": "", "output": ""}\n', encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "s", "sources": [{"name": "d", "path": "d.jsonl", "format": "alpaca"}],
                                      "card": {"tokenizer": None}}), encoding="utf-8")
    with pytest.raises(StrictError, match="1 input records rejected"):
        build(recipe, tmp_path / "out", strict=True, runner="serial")
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert build(recipe, tmp_path / "out", runner="serial")["counts"]["rejected"] == 1
