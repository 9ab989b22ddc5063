"""The output folder: never delete what a build did not write, never look complete when it is not.

A build owns `OUT/.tuneforge/` (its marker, lock, shard work and staging). It refuses an OUT that is a file,
that holds the recipe or an input, or that is a non-empty folder which is not an earlier tuneforge output of
the same recipe (`--force` replaces an output of another recipe). Results are staged inside `.tuneforge/` and
moved into OUT at the end, `manifest.json` last, after the old manifest was removed first: a folder with a
manifest is a finished build. What an interrupted build left in `.tuneforge/` is cleaned by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import write_json
from tuneforge.common.shardio import remove

MARK = ".tuneforge"
MARKER = "build.json"
MANIFEST = "manifest.json"


class OutputError(TuneforgeError):
    """The output folder cannot be used; nothing was written or deleted."""


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


class OutputDir:
    """A claimed output folder (held under an exclusive lock until `release`)."""

    def __init__(self, out: str | Path, recipe: Path, *, force: bool = False) -> None:
        self.out = Path(out).expanduser().absolute()
        self.recipe = recipe.resolve()
        self.force = force
        self.mark = self.out / MARK
        self.work = self.mark / "work"
        self.staging = self.mark / "staging"
        self._lock: Any = None
        self.previous: dict[str, Any] = {}

    # ------------------------------------------------------------ claim
    def check(self, inputs: list[Path]) -> None:
        """Refuse an unusable OUT before anything is read or written."""
        out = self.out.resolve() if self.out.exists() else self.out
        if self.out.is_symlink() and not self.out.exists():
            raise OutputError(f"--out {self.out} is a broken symbolic link")
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {self.out} is a file; give a folder (new, empty, or an earlier output of "
                              f"this recipe)")
        if _inside(self.recipe, out):
            raise OutputError(f"--out {self.out} holds the recipe {self.recipe}; write the build somewhere else "
                              f"(e.g. runs/<name>)")
        for p in inputs:
            real = p.resolve()
            if _inside(real, out) or (real.is_dir() and _inside(out, real)):
                raise OutputError(f"--out {self.out} overlaps the input {p}; write the build somewhere else")
        if out.is_dir() and any(out.iterdir()):
            marker = self.mark / MARKER
            if not marker.is_file():
                raise OutputError(f"--out {self.out} is not empty and is not a tuneforge output; tuneforge will "
                                  f"not delete what it did not write: choose a new or empty folder")
            try:
                self.previous = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                raise OutputError(f"--out {self.out}: its {MARK}/{MARKER} is unreadable; remove the folder by "
                                  f"hand if it is an old output") from None
            other = self.previous.get("recipe")
            if other != str(self.recipe) and not self.force:
                raise OutputError(f"--out {self.out} holds a build of another recipe ({other}); pass --force to "
                                  f"replace it")

    def claim(self) -> None:
        """Take the lock and write the marker; clear what an interrupted build left in staging."""
        self.mark.mkdir(parents=True, exist_ok=True)
        fh = open(self.mark / "lock", "w")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise OutputError(f"another build is writing to {self.out} right now") from None
        self._lock = fh
        remove(self.staging)
        for stray in self.mark.glob(".*.tmp"):
            remove(stray)
        self.staging.mkdir(parents=True)
        self.work.mkdir(parents=True, exist_ok=True)
        write_json(self.mark / MARKER, {**self.previous, "recipe": str(self.recipe), "status": "building",
                                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "pid": os.getpid(), "written": self.previous.get("written", [])})

    # ------------------------------------------------------------ commit
    def commit(self, names: list[str]) -> None:
        """Move the staged entries into OUT: the old manifest goes first and the new one last."""
        owned = set(self.previous.get("written", []))
        for name in names:
            target = self.out / name
            if (target.exists() or target.is_symlink()) and name not in owned and name != MANIFEST:
                raise OutputError(f"{target} exists and was not written by tuneforge; move it away and re-run")
        remove(self.out / MANIFEST)
        for name in sorted(owned - set(names)):
            remove(self.out / name)
        for name in [n for n in names if n != MANIFEST] + [MANIFEST]:
            src = self.staging / name
            if not src.exists():
                continue
            target = self.out / name
            if target.exists() or target.is_symlink():
                trash = self.mark / f".old-{name}"
                remove(trash)
                os.replace(target, trash)
                remove(trash)
            os.replace(src, target)
        marker = {**self.previous, "recipe": str(self.recipe), "status": "complete", "written": sorted(names),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        marker.pop("pid", None)
        write_json(self.mark / MARKER, marker)
        remove(self.staging)

    def prune(self, keep: set[str]) -> None:
        """Remove work units this build did not use (older inputs, recipe or code)."""
        for stage in self.work.iterdir() if self.work.is_dir() else []:
            for unit in stage.iterdir():
                if f"{stage.name}/{unit.name}" not in keep:
                    remove(unit)

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
