"""benchmarks/RESULTS.md: each benchmark script owns one `## name` section and rewrites only that."""

from __future__ import annotations

import subprocess
from pathlib import Path


def write_section(path: Path, name: str, text: str) -> None:
    """Replace this benchmark's `## name` section of RESULTS.md, leaving the others alone."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    parts = old.split("\n## ")
    head, sections = parts[0], {p.split("\n", 1)[0].strip(): "## " + p for p in parts[1:]}
    sections[name] = text.rstrip() + "\n"
    path.write_text(head.rstrip() + "\n\n" + "\n".join(sections[k] for k in sorted(sections)), encoding="utf-8")


def commit(repo: Path) -> str | None:
    """The checkout's short commit, recorded beside a run's figures (None outside a git checkout)."""
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip() or None
