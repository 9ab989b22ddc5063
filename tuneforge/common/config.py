"""Reading config files (recipes, pipelines, training and eval configs) the same way everywhere: YAML is
data (`yaml.safe_load`), and a validation error names the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tuneforge.common.errors import RecipeError


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The YAML mapping in `path`; a missing file, bad YAML or a non-mapping is a RecipeError naming it."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{what} not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"{p}: cannot read {what}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a {what} must be a YAML mapping")
    return data


def error_lines(e: ValidationError) -> list[str]:
    """`field.path: message` for every problem pydantic found."""
    return [f"{'.'.join(str(x) for x in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()]
