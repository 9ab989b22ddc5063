"""A recipe is data: YAML read with `yaml.safe_load` and validated, so a typo is an error naming the field.

The recipe composes each stage's own config model; stages validate their blocks, this module only
gathers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from tuneforge.augment.config import AugmentConfig
from tuneforge.clean import CleanConfig
from tuneforge.clean.exclude import ExcludeConfig, exclusion_path
from tuneforge.common.config import error_lines, read_yaml_mapping
from tuneforge.common.errors import RecipeError
from tuneforge.ingest.config import SourceConfig
from tuneforge.publish.config import CardConfig, SplitConfig
from tuneforge.publish.formats import check_format


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    seed: int = 42
    variables: dict[str, str] = Field(default_factory=dict, description="values for <NAME>/{{name}} placeholders")
    template: str = Field("chatml", description="the chat template the dataset is built for (used by train/eval)")
    sources: list[SourceConfig] = Field(min_length=1)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    augment: AugmentConfig | None = None
    formats: list[str] = Field(default_factory=lambda: ["openai"])
    split: SplitConfig = Field(default_factory=SplitConfig)
    card: CardConfig = Field(default_factory=CardConfig)
    exclude: ExcludeConfig | None = Field(None, description="drop the top records of a ranked attribution file")

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """No `exclude` key when there is none, so the manifest of a build without one is as it was."""
        out = handler(self)
        if out.get("exclude", 0) is None:
            del out["exclude"]
        return out

    def capped(self, augment_limit: int | None) -> Recipe:
        """This recipe with every augmentation step limited to at most `augment_limit` records."""
        if augment_limit is None or self.augment is None:
            return self
        steps = [st.model_copy(update={"limit": min(st.limit, augment_limit) if st.limit is not None
                                       else augment_limit}) for st in self.augment.steps]
        return self.model_copy(update={"augment": self.augment.model_copy(update={"steps": steps})})

    @field_validator("sources")
    @classmethod
    def _unique(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _prompts_answered(self) -> Recipe:
        """A `kind: prompt` source needs an `answer` step that takes its records: without one every question
        would end in the rejects, so the recipe is refused before anything is read."""
        steps = self.augment.steps if self.augment is not None else []
        for src in self.sources:
            if src.kind != "prompt":
                continue
            if not any(st.op == "answer" and "prompt" in (st.select.kinds or ("prompt",))
                       and (not st.select.sources or src.name in st.select.sources)
                       and (st.select.from_steps is None or "input" in st.select.from_steps) for st in steps):
                raise ValueError(f"source {src.name!r} has `kind: prompt` (questions without answers) but no "
                                 f"`augment:` step with `op: answer` selects it; add one, e.g. `augment: {{steps: "
                                 f"[{{op: answer, select: {{sources: [{src.name}]}}}}]}}`")
        return self

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        for f in v:
            check_format(f)
        return v


def parse_recipe(data: Any, origin: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe must be a YAML mapping")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"{origin}: invalid recipe\n  " + "\n  ".join(error_lines(e))) from None


def load_recipe(path: str | Path) -> tuple[Recipe, Path]:
    """The validated recipe and the folder its relative paths are resolved against. The user's own filters and
    normalisers it names are imported and made here, so a misspelt path stops every command before any work."""
    p = Path(path)
    recipe = parse_recipe(read_yaml_mapping(p, "recipe"), str(p))
    if recipe.clean.filters.custom or recipe.clean.normalize.custom:
        from tuneforge.clean.custom import check_user_ops

        try:
            check_user_ops(recipe.clean)
        except RecipeError as e:
            raise RecipeError(f"{p}: {e}") from None
    return recipe, p.parent


def fingerprint(path: str | Path) -> str:
    """A hash of everything a build depends on: the recipe text, every input file, prompt templates the
    recipe names, the source of every tuneforge stage the build runs, the files of the user modules its
    `custom:` filters and normalisers name and its badwords list; equal fingerprints mean an identical build."""
    from tuneforge.clean.custom import input_digests
    from tuneforge.common.io import sha256_file, sha256_text
    from tuneforge.common.source_hash import BUILD, source_hash
    from tuneforge.ingest import resolve_files

    recipe, base = load_recipe(path)
    parts = [source_hash(*BUILD), Path(path).read_text(encoding="utf-8")]
    parts += [f"clean:{d}" for d in input_digests(recipe.clean, base)]  # user modules, the badwords list
    for src in recipe.sources:
        parts += [f"{f}:{sha256_file(f)}" for f in resolve_files(src, base, allow_outside=True) if f.is_file()]
    if recipe.exclude is not None:  # the ranking it excludes by is an input too
        ex = exclusion_path(recipe.exclude, base)  # the file the build reads
        parts.append(f"exclude:{sha256_file(ex) if ex.is_file() else 'missing'}")
    from tuneforge.templates.loader import PROMPTS_DIR

    for root in (base, PROMPTS_DIR):
        parts += [f"{f.relative_to(root)}:{sha256_file(f)}" for f in sorted(root.rglob("*.jinja"))]
    return sha256_text("\n".join(parts))
