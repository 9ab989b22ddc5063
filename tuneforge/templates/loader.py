"""One Jinja2 loader for every template: chat templates, augmentation prompts and users' own files.

Everything renders in a `SandboxedEnvironment` with `StrictUndefined`: a user template cannot reach Python
internals, and a missing variable is an error that names it instead of an empty string in the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from tuneforge.common.errors import TuneforgeError

PACKAGE_DIR = Path(__file__).parent
PROMPTS_DIR = PACKAGE_DIR / "prompts"
CHAT_DIR = PACKAGE_DIR / "chat"


class TemplateError(TuneforgeError):
    """A template failed to load or render; the message names the template and the cause."""


def make_env(search: list[Path] | None = None) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(p) for p in (search or [])]) if search else None,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["tojson_zh"] = _tojson_zh
    return env


def _tojson_zh(value: Any, indent: int | None = None) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, indent=indent)


def _resolve_prompt(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix and p.is_file():
        return p
    candidate = PROMPTS_DIR / f"{name_or_path}.jinja"
    if candidate.is_file():
        return candidate
    known = sorted(q.stem for q in PROMPTS_DIR.glob("*.jinja"))
    raise TemplateError(f"prompt template {str(name_or_path)!r} not found (not a file, and not one of: "
                        f"{', '.join(known) or 'none'})")


def load_prompt(name_or_path: str | Path) -> jinja2.Template:
    """A packaged prompt by name (`templates/prompts/<name>.jinja`) or a user's template file, sandboxed."""
    path = _resolve_prompt(name_or_path)
    env = make_env([path.parent])
    try:
        return env.get_template(path.name)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{path}: line {e.lineno}: {e.message}") from None


def prompt_source(name_or_path: str | Path) -> str:
    """The template's text, for hashing into cache keys (a changed prompt is a new cache entry)."""
    return _resolve_prompt(name_or_path).read_text(encoding="utf-8")


def render(template: jinja2.Template, /, **variables: Any) -> str:
    name = template.name or "<string>"
    try:
        return template.render(**variables)
    except jinja2.UndefinedError as e:
        raise TemplateError(f"template {name}: {e.message} (pass it as a variable)") from None
    except jinja2.exceptions.SecurityError as e:
        raise TemplateError(f"template {name}: blocked by the sandbox: {e}") from None


def render_string(source: str, /, **variables: Any) -> str:
    """Render template text (a recipe's inline template) in the sandbox."""
    try:
        template = make_env().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"inline template: line {e.lineno}: {e.message}") from None
    return render(template, **variables)


def render_prompt(name_or_path: str | Path, /, **variables: Any) -> str:
    return render(load_prompt(name_or_path), **variables)
