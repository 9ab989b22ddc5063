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
    except RecursionError:
        raise RecipeError(f"{p}: its values are nested too deeply; flatten them") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a {what} must be a YAML mapping")
    _check_expansion(data, p)
    return data


MAX_NODES = 1_000_000  # values in a config once its YAML aliases are expanded


def _check_expansion(data: Any, path: Path) -> None:
    """Refuse a YAML whose aliases expand past MAX_NODES values ("billion laughs") or into themselves: the
    loaded object shares the repeated parts, but validating, dumping or hashing it would expand them all."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(x: Any) -> int:
        if not isinstance(x, dict | list):
            return 1
        key = id(x)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise RecipeError(f"{path}: a YAML alias refers to a value that contains it; write the value out")
        open_.add(key)
        items = list(x.keys()) + list(x.values()) if isinstance(x, dict) else x
        total = 1
        for item in items:
            total += size(item)
            if total > MAX_NODES:
                raise RecipeError(f"{path}: its YAML aliases expand to over {MAX_NODES:,} values; write the "
                                  f"values out or use fewer nested aliases")
        open_.discard(key)
        sizes[key] = total
        return total

    try:
        size(data)
    except RecursionError:
        raise RecipeError(f"{path}: its values are nested too deeply; flatten them") from None


def error_lines(e: ValidationError) -> list[str]:
    """`field.path: message` for every problem pydantic found."""
    return [f"{'.'.join(str(x) for x in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()]
