"""The template registry: every `chat/<name>.yaml` declaration names a Jinja2 file beside it.

Adding a template is dropping a `.jinja` and a `.yaml` into `templates/chat/`; a user's own template is a
path to a `.jinja` file (with an optional `.yaml` of the same stem), rendered in the same sandbox.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from tuneforge.templates.chat_template import ChatTemplate, Declaration, TokenizerTemplate
from tuneforge.templates.loader import CHAT_DIR, TemplateError

_FIELDS = {f.name for f in fields(Declaration)}


def _declaration(path: Path, **overrides: Any) -> Declaration:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise TemplateError(f"template declaration {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"template declaration {path}: should be a mapping")
    unknown = set(data) - _FIELDS
    if unknown:
        raise TemplateError(f"template declaration {path}: unknown field(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(_FIELDS))}")
    data.setdefault("name", path.stem)
    data.setdefault("template", f"{path.stem}.jinja")
    return _override(Declaration(**data), overrides)


def _override(decl: Declaration, overrides: dict[str, Any]) -> Declaration:
    for key, value in overrides.items():
        if key not in _FIELDS or key in ("name", "template"):
            raise TemplateError(f"template {decl.name}: cannot override {key!r}; "
                                f"overridable: {', '.join(sorted(_FIELDS - {'name', 'template'}))}")
        setattr(decl, key, value)
    return decl


def list_templates() -> list[str]:
    """Registered template names, plus `tokenizer` (the model's own chat_template)."""
    return sorted([p.stem for p in CHAT_DIR.glob("*.yaml")] + ["tokenizer"])


def _from_file(path: Path, overrides: dict[str, Any]) -> ChatTemplate:
    decl_path = path.with_suffix(".yaml")
    if decl_path.is_file():
        decl = _declaration(decl_path, **overrides)
    else:
        decl = _override(Declaration(name=path.stem, template=path.name), overrides)
    src = path.parent / decl.template
    if not src.is_file():
        raise TemplateError(f"template {decl.name}: its Jinja2 file {src} does not exist")
    return ChatTemplate(decl, src.read_text(encoding="utf-8"))


def get_template(name: str | Path, *, tokenizer: Any = None, **overrides: Any) -> ChatTemplate:
    """A template by registered name, `tokenizer` (needs tokenizer=), or a path to a user's `.jinja` file.

    Keyword overrides replace declaration fields, e.g. `get_template("chatglm", eot="")` for ChatGLM-6B's
    inference prompt without <eop> after history answers.
    """
    if str(name) == "tokenizer":
        if tokenizer is None:
            raise TemplateError("template 'tokenizer' uses a model's own chat_template: pass tokenizer=")
        t = TokenizerTemplate(tokenizer)
        if overrides:
            _override(t.decl, overrides)
        return t
    decl_path = CHAT_DIR / f"{name}.yaml"
    if decl_path.is_file():
        return _from_file(decl_path.with_suffix(".jinja"), overrides)
    path = Path(name)
    if path.suffix == ".jinja" and path.is_file():
        return _from_file(path, overrides)
    raise TemplateError(f"unknown chat template {str(name)!r}: not one of {', '.join(list_templates())}, "
                        "and not a path to a .jinja file")
