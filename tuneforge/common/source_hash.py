"""A hash of the tuneforge code a job runs, for cache keys: editing that code re-runs the job instead of silently
reusing outputs made by the old code, and editing any other code does not.

What a job runs is derived from the code itself, not listed by hand: from the modules holding the functions
the job calls (its entries), every tuneforge module they import, at the top or inside a function (a lazy
import runs when its function does), transitively; the packages above each module (Python runs their
`__init__` on import: only their import-time imports are followed, since the job calls nothing in them); the
modules a module starts by name, which no import statement shows (`BY_NAME`); and the data files (`.jinja`,
`.yaml`, `.json`) of every package it reaches. A hand-kept list per job would drift from the imports the
day someone adds one, and re-run too much or, worse, too little; the import graph cannot drift. Imports are
read with a regular expression, not `ast` (a build hashes its code on every run: 15 ms against 0.5 s here);
it can only over-include (an import in a docstring or a TYPE_CHECKING block), never miss an import statement.

It lives in `common/` because the recipe's fingerprint, the build's shard keys and the pipeline's step keys
all use it.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT.name  # "tuneforge"
DATA_SUFFIXES = {".jinja", ".yaml", ".json"}
BUILD = ("tuneforge.builder.run",)  # `build()`: what the recipe fingerprint and the build's shard keys cover

# Modules a module starts by name, where no import statement shows it: a subprocess's `python -m`, a fork
# server's preload, a lazy attribute. tests/test_pipeline_cache.py checks that every tuneforge module named in
# a string is imported anyway, listed here, or in NOT_RUN.
BY_NAME: dict[str, tuple[str, ...]] = {
    "tuneforge.augment": ("tuneforge.augment.config", "tuneforge.augment.run"),  # __getattr__
    "tuneforge.augment.endpoint": ("tuneforge.augment.local_server",),  # the embedded server, -m
    "tuneforge.builder.executor": ("tuneforge.builder.forkserver_exit",),  # fork-server preload
    "tuneforge.builder.run": ("tuneforge.builder.tasks",),  # fork-server preload
    "tuneforge.clean.minhash": ("tuneforge.clean.stage",),  # fork-server preload
    "tuneforge.trainers.launch": ("tuneforge.trainers.__main__",),  # accelerate launch -m tuneforge.trainers
}
# Named in a string but never run by the naming module's job: the build preloads the CLI into its workers
# only when the CLI started the build (each worker imports the caller's main module anyway).
# Logger names that are module names are not imports either.
NOT_RUN: dict[str, tuple[str, ...]] = {"tuneforge.builder.run": ("tuneforge.cli",),
                                       "tuneforge.augment.local_engine": ("tuneforge.augment.local_server",),
                                       "tuneforge.publish.summary": ("tuneforge.builder",)}

_IMPORT = re.compile(rb"^([ \t]*)(?:from[ \t]+([.\w]+)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)|import[ \t]+([^\n]*))",
                     re.M)


class _Tree:
    """tuneforge's modules under `root`, found by one walk of the tree, each file read at most once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, Path] = {}
        self._bytes: dict[Path, bytes] = {}
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            rel = Path(folder).relative_to(root).parts
            for n in names:
                if n.endswith(".py"):
                    parts = (PACKAGE, *rel) if n == "__init__.py" else (PACKAGE, *rel, n[:-3])
                    self.files[".".join(parts)] = Path(folder) / n

    def read(self, f: Path) -> bytes:
        if f not in self._bytes:
            self._bytes[f] = f.read_bytes()
        return self._bytes[f]

    def package_of(self, name: str) -> str:
        return name if self.files[name].name == "__init__.py" else name.rpartition(".")[0]

    def imports(self, name: str) -> list[tuple[str, bool]]:
        f = self.files.get(name)
        if f is None:
            return []
        out: list[tuple[str, bool]] = []
        for indent, raw_source, raw_names, raw_plain in _IMPORT.findall(self.read(f)):
            top = not indent
            source, names, plain = (b.decode("utf-8") for b in (raw_source, raw_names, raw_plain))
            if plain:
                mods = (item.split(" as ")[0].strip() for item in plain.split("#")[0].split(","))
                out += [(mod, top) for mod in mods if mod in self.files]
                continue
            if source.startswith("."):
                dots = len(source) - len(source.lstrip("."))
                base = self.package_of(name).split(".")
                base = base[: len(base) - (dots - 1)]
                source = ".".join(base + ([source.lstrip(".")] if source.lstrip(".") else []))
            if source not in self.files:
                continue
            listed = " ".join(line.split("#")[0] for line in names.strip("()").splitlines())
            items = [i.split(" as ")[0].strip() for i in listed.split(",") if i.strip()]
            subs = [f"{source}.{i}" for i in items if f"{source}.{i}" in self.files]
            out += [(sub, top) for sub in subs]
            if len(subs) < len(items):  # a name defined in `source` itself (else `source` only runs as a parent)
                out.append((source, top))
        return out

    def closure(self, entries: tuple[str, ...]) -> list[str]:
        called: set[str] = set()
        loaded: set[str] = set()
        todo = [(e, True) for e in entries]
        while todo:
            name, calls = todo.pop()
            calls = calls and name != PACKAGE  # the root only re-exports the API: no job calls through it
            if name in called or (not calls and name in loaded):
                continue
            (called if calls else loaded).add(name)
            parts = name.split(".")
            todo += [(".".join(parts[:i]), False) for i in range(1, len(parts))]  # the packages above it
            todo += [(dep, calls) for dep, top in self.imports(name) if calls or top]
            if calls:
                todo += [(dep, True) for dep in BY_NAME.get(name, ())]
        return sorted((called | loaded) & self.files.keys())

    def code_files(self, entries: tuple[str, ...]) -> list[Path]:
        files: set[Path] = set()
        for name in self.closure(entries):
            f = self.files[name]
            files.add(f)
            if f.name == "__init__.py":
                files.update(_data_files(f.parent))
        return sorted(files)


def module_file(name: str, root: Path | None = None) -> Path | None:
    """The file of tuneforge module `name` (a package's `__init__.py`), or None when there is none."""
    return _Tree(root or ROOT).files.get(name)


def imports(name: str, root: Path | None = None) -> list[tuple[str, bool]]:
    """The tuneforge modules module `name` imports, each with whether the import is at the top of the file
    (runs on import) or indented (inside a function, or a block)."""
    return _Tree(root or ROOT).imports(name)


def code_modules(*entries: str, root: Path | None = None) -> list[str]:
    """Every tuneforge module a job whose functions live in `entries` runs (see the module docstring)."""
    return _Tree(root or ROOT).closure(entries)


def code_files(*entries: str, root: Path | None = None) -> list[Path]:
    """The files `code_modules(*entries)` covers: each module's source and its packages' data files."""
    return _Tree(root or ROOT).code_files(entries)


def _data_files(folder: Path) -> list[Path]:
    """A package's data files: in its folder and the sub-folders that are not packages of their own."""
    out = [f for f in folder.iterdir() if f.is_file() and f.suffix in DATA_SUFFIXES]
    for sub in folder.iterdir():
        if sub.is_dir() and sub.name != "__pycache__" and not (sub / "__init__.py").is_file():
            out += [f for f in sub.rglob("*") if f.is_file() and f.suffix in DATA_SUFFIXES]
    return out


@lru_cache(maxsize=64)
def source_hash(*entries: str) -> str:
    """sha256 over the files (names relative to tuneforge/, and bytes) of the code a job run from `entries`
    runs (`code_files`)."""
    tree = _Tree(ROOT)
    h = hashlib.sha256()
    for f in tree.code_files(entries):
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + tree.read(f) + b"\0")
    return h.hexdigest()
