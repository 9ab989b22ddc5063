"""Typed results of the public API. Each is the plain dict that the matching JSON file holds (so it can be
saved, compared and indexed as before), with its main keys also readable, typed, as attributes."""

from __future__ import annotations

from typing import Any


class Result(dict):
    """A JSON-ready dict whose keys read as attributes (`result.counts` is `result["counts"]`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(sorted(self))})"


class BuildResult(Result):
    """The build's manifest (OUT/manifest.json): counts that reconcile per source, the datasets written,
    their splits, rejects, the recipe's fingerprint and the manifest's own sha256."""

    counts: dict[str, Any]
    sources: dict[str, Any]
    datasets: dict[str, str]
    template: str | None
    sha256: str


class PipelineResult(Result):
    """A pipeline run's results.json: the build, each training stage, the evaluations, the forgetting block
    and the gate's decision, and which steps ran or were reused from the cache."""

    pipeline: str
    build: dict[str, Any]
    train: list[dict[str, Any]]
    evaluations: dict[str, Any]
    steps: dict[str, list[str]]

    @property
    def gate(self) -> dict[str, Any] | None:
        return self.get("gate")

    @property
    def verdict(self) -> str | None:
        return (self.get("gate") or {}).get("verdict")

    @property
    def passed(self) -> bool:
        return bool((self.get("gate") or {"passed": True})["passed"])
