"""The docs cannot drift from the code: every fenced example in README.md and docs/*.md is checked.

- `tuneforge ...` command lines (bash blocks, optional `[...]` groups included): the command exists, and
  every `--flag` it shows is one of that command's options; repository files it names exist.
- YAML blocks: each parses with yaml.safe_load and validates against the schema it documents (a recipe or a
  recipe's `clean:`/`augment:` section, a training config, an eval config section, a pipeline, a search
  block, a chat template declaration).
- Python blocks: each compiles, and every name it imports from tuneforge exists.
- Prose: a `tuneforge ...` span names a command and its options; every flag the README names is an option;
  the default runner the docs name is the CLI's; python-api.md's signatures are the public functions'
  (`inspect.signature`), its `build` options are `tuneforge.build`'s, and `strict` does what `--strict` does.
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


def _check_command(where: str, line: str, files: bool = True) -> None:
    """`tuneforge LINE`: the command exists, every --flag is one of its options, and (`files`) the repository
    files it names exist."""
    words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))
    cmd, rest = _resolve(_click(), words)
    assert not hasattr(cmd, "commands") or not rest or rest[0].startswith("-"), \
        f"{where}: `tuneforge {line}`: no command {rest[0]!r}"
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    flags = {w.split("=", 1)[0] for w in rest if w.startswith("--")}
    unknown = sorted(flags - known)
    assert not unknown, f"{where}: `tuneforge {line}`: {cmd.name} has no option {', '.join(unknown)}"
    for w in rest if files else []:
        if re.match(r"^(configs|pipelines|datasets)/[\w./-]+\.(ya?ml|jsonl?)$", w):
            assert (REPO / w).is_file(), f"{where}: names {w}, which is not in the repository"


@pytest.mark.parametrize(("where", "line"), CASES, ids=[f"{w}:{i}" for i, (w, _) in enumerate(CASES)])
def test_documented_commands_exist_with_their_flags(where, line):
    _check_command(where, line)


def _spans(doc: Path) -> list[str]:
    """The inline code spans of a doc's prose (fenced blocks left out), whitespace made single spaces."""
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    return [" ".join(m.split()) for m in re.findall(r"`([^`\n]+(?:\n[^`\n]+)?)`", text)]


INLINE = [(f"{doc.relative_to(REPO)}", span.split("tuneforge ", 1)[1]) for doc in DOCS for span in _spans(doc)
          if span.startswith("tuneforge ")]


@pytest.mark.parametrize(("where", "line"), INLINE, ids=[f"{w}:{i}" for i, (w, _) in enumerate(INLINE)])
def test_commands_named_in_the_prose_exist_with_their_flags(where, line):
    """`tuneforge forgetting --base-eval DIR` in a sentence is held to the same check as a fenced example (its
    paths may be placeholders: `pipelines/X.yaml`)."""
    _check_command(where, line, files=False)


# Flags the README names that belong to another program, and where each is defined.
NOT_TUNEFORGE = {"--no-deps": "pip", "--embedded-json": "benchmarks/augment.py",
                 "--json-concurrency": "benchmarks/augment.py"}


def test_every_flag_the_readme_names_is_a_tuneforge_option():
    """A flag in the README's prose (`--strict`, `--llm-base-url`, `build --runner dask`: a span that starts with
    the flag or a command) is an option of some `tuneforge` command (or, listed above, of the program that has
    it)."""
    def options(cmd) -> set[str]:
        own = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        return own.union(*(options(c) for c in getattr(cmd, "commands", {}).values()))

    click = _click()
    known = options(click)
    ours = [span for span in _spans(REPO / "README.md")
            if span.startswith("--") or span.split()[0] in ("tuneforge", *click.commands)]
    named = {m for span in ours for m in re.findall(r"(?:^| )(--[a-z][\w-]*)", span)}
    assert named, "the README names no flag: this test reads it wrong"
    for flag in sorted(named - known):
        owner = NOT_TUNEFORGE.get(flag)
        assert owner, f"README names {flag}, which no tuneforge command has"
        if owner.endswith(".py"):
            assert f'"{flag}"' in (REPO / owner).read_text(encoding="utf-8"), f"{owner} has no {flag}"


def test_every_documented_runner_default_is_the_code_s():
    """The README and orchestration docs name the build's default runner as the CLI has it."""
    build = _click().commands["build"]
    default = next(p.default for p in build.params if p.name == "runner")
    for doc in (REPO / "README.md", REPO / "docs/orchestration.md"):
        text = " ".join(doc.read_text(encoding="utf-8").split())
        said = [m.group(1) or m.group(2) for m in re.finditer(
            r"`--runner (\w+)`[^.]{0,40}\bthe default\b|the default[^.]{0,20}`--runner (\w+)`", text)]
        # ... and a runner name marked as the default in a sentence about runners: "`processes` (the default)"
        said += [m.group(1) for m in re.finditer(r"`(?:--runner )?(\w+)`,? \((?:the )?default\b", text)
                 if "runner" in text[max(0, m.start() - 200):m.start()]]
        for named in said:
            assert named == default, f"{doc.name} calls --runner {named} the default; the code's is {default}"
        if doc.name == "README.md":
            assert said, "the README no longer names the default runner where this test looks for it"


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


def _signature_rows() -> list[tuple[str, str]]:
    """(function, its documented parameters) from the table of docs/python-api.md's `## Functions`."""
    text = (REPO / "docs/python-api.md").read_text(encoding="utf-8")
    table = text.split("## Functions", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)\((.*?)\)` \|", table, re.M)


def _documented_options(name: str) -> list[str]:
    """The options python-api.md lists for `name` ("`build` takes the options of ...: `seed`, ...")."""
    text = " ".join((REPO / "docs/python-api.md").read_text(encoding="utf-8").split())
    listed = re.search(rf"`{name}` takes the options of `tuneforge {name}`: (.*?)\. The output", text).group(1)
    while "(" in listed:  # drop the parenthesised notes (the runner names, the executor example)
        listed = re.sub(r"\([^()]*\)", "", listed)
    return re.findall(r"`(\w+)`", listed)


def test_documented_signatures_are_the_code_s():
    """Every function of the public API has its row in python-api.md, and the row's parameters are the code's:
    the same names, order, kinds (positional, keyword-only, **) and defaults. A documented `**options` of a
    function whose options are keyword parameters stands for the options the page lists for it."""
    import inspect

    import tuneforge
    from tuneforge import api

    rows = dict(_signature_rows())
    public = {n for n in tuneforge.__all__ if inspect.isfunction(getattr(tuneforge, n))}
    assert public == {n for n, f in vars(api).items() if inspect.isfunction(f) and f.__module__ == api.__name__
                      and not n.startswith("_")}
    assert set(rows) == public, f"documented {sorted(rows)} vs tuneforge's {sorted(public)}"
    for name, documented in rows.items():
        fn = ast.parse(f"def {name}({documented}): pass").body[0].args
        doc = [(a.arg, "positional", d) for a, d in
               zip(fn.args, [None] * (len(fn.args) - len(fn.defaults)) + fn.defaults, strict=True)]
        doc += [(a.arg, "keyword", d) for a, d in zip(fn.kwonlyargs, fn.kw_defaults, strict=True)]
        code = inspect.signature(getattr(tuneforge, name)).parameters.values()
        kinds = {inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional", inspect.Parameter.KEYWORD_ONLY: "keyword"}
        got = [(p.name, kinds[p.kind], p.default) for p in code if p.kind in kinds]
        if fn.kwarg and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in code):
            options = [n for n, kind, _ in got if kind == "keyword" and n not in {a for a, *_ in doc}]
            assert options == _documented_options(name), f"{name}: **{fn.kwarg.arg} is not the listed options"
            got = [g for g in got if g[0] not in options]
        else:
            assert bool(fn.kwarg) == any(p.kind is inspect.Parameter.VAR_KEYWORD for p in code), \
                f"{name}({documented}): the code's ** parameter differs"
        assert [(n, k) for n, k, _ in doc] == [(n, k) for n, k, _ in got], f"{name}({documented}) vs the code"
        for (n, _, d), (_, _, default) in zip(doc, got, strict=True):
            want = inspect.Parameter.empty if d is None else ast.literal_eval(d)
            assert default == want, f"{name}: {n} defaults to {default!r}, documented {want!r}"


def test_documented_build_options_are_build_s_parameters(tmp_path):
    """python-api.md's list of `build` options is the signature of `tuneforge.build`, which is that of
    `tuneforge.builder.build` (names, order, defaults), and `strict` does what it says."""
    import inspect

    from tuneforge import StrictError, build
    from tuneforge.builder import build as builder_build

    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert params(build) == params(builder_build)

    names = _documented_options("build")
    params = list(inspect.signature(build).parameters)[2:]
    assert names == params, f"documented {names} vs build's {params}"
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "你好", "output": "你好！"}\n{"instruction": "", "output": ""}\n', encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "s", "sources": [{"name": "d", "path": "d.jsonl", "format": "alpaca"}],
                                      "card": {"tokenizer": None}}), encoding="utf-8")
    with pytest.raises(StrictError, match="1 input records rejected"):
        build(recipe, tmp_path / "out", strict=True, runner="serial")
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert build(recipe, tmp_path / "out", runner="serial")["counts"]["rejected"] == 1


def test_strict_fails_a_build_whose_augment_step_failed_every_item(tmp_path):
    """`strict` means what `--strict` means: an augment step that failed every item it selected (here every
    reply is cut at max_tokens) raises StrictError after the output is written, where the CLI exits 2 naming
    the step; without strict the build returns and the CLI only warns."""
    import os
    import subprocess
    import sys

    from fake_openai_server import FakeOpenAIServer, Plan

    from tuneforge import StrictError, build

    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"instruction": "问题{i}", "output": "回答{i}"}}\n' for i in range(3)), encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "s", "sources": [{"name": "d", "path": "d.jsonl", "format": "alpaca"}], "card": {"tokenizer": None},
        "augment": {"llm": {"max_attempts": 1, "repair_attempts": 0}, "cache": "cache.sqlite",
                    "steps": [{"op": "rewrite"}]}}), encoding="utf-8")
    with FakeOpenAIServer(Plan(fault_rate=1.0, faults=("length",))) as srv:
        with pytest.raises(StrictError, match=r"augment step 'rewrite': all 3 items failed \(3 cut at max_tokens\)"):
            build(recipe, tmp_path / "out", strict=True, runner="serial", llm_base_url=srv.base_url)
        assert (tmp_path / "out" / "manifest.json").is_file()
        assert build(recipe, tmp_path / "out", runner="serial", llm_base_url=srv.base_url)["counts"]["kept"] == 3
        cli = [sys.executable, "-m", "tuneforge.cli", "build", str(recipe), "--out", str(tmp_path / "out"),
               "--llm-base-url", srv.base_url, "--runner", "serial"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        strict = subprocess.run([*cli, "--strict"], capture_output=True, text=True, env=env, timeout=300)
        plain = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300)
    assert strict.returncode == 2 and "error: augment step 'rewrite': all 3 items failed" in strict.stderr, strict.stderr
    assert plain.returncode == 0 and "warning: augment step 'rewrite'" in plain.stderr, plain.stderr
