"""How a recipe names a source corpus (validated, so a typo names the field)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Tags(BaseModel):
    """ShareGPT-style role tags, as in LLaMA-Factory's dataset_info.json `tags`."""

    model_config = ConfigDict(extra="forbid")
    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"


class SourceConfig(BaseModel):
    """One corpus: where it is, what layout it has, and where it came from."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    path: str | list[str] = Field(description="file, directory or glob, relative to the recipe")
    format: str = Field("auto", description="source format; `auto` detects it from the first records")
    kind: Literal["prompt"] | None = Field(
        None, description="`prompt`: questions with no answers yet (format `prompt`), for the `answer` step")
    encoding: str = Field("auto", description="`auto` (UTF-8, UTF-8 BOM, GB18030) or a Python codec name")
    file_type: Literal["auto", "json", "jsonl", "csv", "tsv", "parquet", "text", "arrow"] = "auto"
    text_unit: Literal["file", "line", "paragraph"] = "line"
    csv_header: bool = True
    csv_columns: list[str] | None = Field(None, description="column names for a headerless CSV")
    columns: dict[str, str] = Field(default_factory=dict,
                                    description="canonical field -> field in this corpus (LLaMA-Factory style)")
    tags: Tags = Field(default_factory=Tags)
    options: dict[str, Any] = Field(default_factory=dict, description="format-specific options")
    fill_placeholders: bool = Field(False, description="fill <NAME> / {{name}} from the recipe's variables")
    limit: int | None = Field(None, ge=1, description="read only the first N records of this source")
    max_record_bytes: int = Field(8 << 20, ge=1, description="records larger than this are rejected")
    role_order: Literal["merge", "reject"] = Field(
        "merge", description="two user (or assistant) turns in a row: merge them into one turn, or reject the record")
    allow_outside: bool = Field(False, description="allow paths outside the recipe's folder (listed in the manifest)")
    license: str = "unknown"
    origin: str = Field("", description="where the data came from (repository, commit, path)")

    @model_validator(mode="after")
    def _prompt_kind(self) -> SourceConfig:
        """Prompts are declared, never guessed from a missing answer: `kind: prompt` reads with format `prompt`."""
        if self.kind == "prompt" and self.format not in ("auto", "prompt"):
            raise ValueError(f"source {self.name!r}: `kind: prompt` reads questions with format `prompt`; remove "
                             f"`format: {self.format}` (map other field names with `columns: {{prompt: ...}}`)")
        if self.kind == "prompt" or self.format == "prompt":
            self.kind, self.format = "prompt", "prompt"
        return self
