"""The output folder: never delete what a build did not write, never look complete when it is not.

A build owns `OUT/.tuneforge/` (its marker, lock, shard work and published versions). It refuses an OUT that
is a file, that holds the recipe or an input, or that is a non-empty folder which is not an earlier tuneforge
output of the same recipe (`--force` replaces an output of another recipe).

Replacing an output is one atomic switch. Each build writes a complete new version into
`.tuneforge/versions/<n>/`; every published name (`OUT/dataset`, `OUT/manifest.json`, ...) is a relative
symbolic link to `.tuneforge/current/<name>`, and `.tuneforge/current` is a link to the live version. The
switch is one `rename` of `current`: a reader that opens `OUT/dataset` sees the old complete output or the new
complete one, whatever moment the build dies (a name the live version lacks is a dangling link, i.e. absent).
What an interrupted build left (an unfinished version, a stray link) is cleaned by the next one.
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
CURRENT = "current"
VERSIONS = "versions"
# Tests kill the build here (`TUNEFORGE_TEST_DIE_AT=<point>`): every step of the switch must leave a readable
# old or new output. Unset, it costs one dict lookup per step.
_DIE_AT = "TUNEFORGE_TEST_DIE_AT"


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
        self.versions = self.mark / VERSIONS
        self.current = self.mark / CURRENT
        self.staging = self.versions / "0"  # set by claim(): the version this build writes
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
        out_s = os.path.realpath(out)
        for p in inputs:
            real = os.path.realpath(p)  # strings: one resolve an input (20,000 small files)
            if real == out_s or real.startswith(out_s + os.sep) or out_s.startswith(real + os.sep):
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
            # Only a published output is another recipe's to keep: a failed first build left nothing to protect.
            if other != str(self.recipe) and self.previous.get("written") and not self.force:
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
        remove(self.mark / "staging")  # the layout before versions
        for stray in [*self.mark.glob(".*.tmp"), *self.mark.glob(".*.tflink"), *self.out.glob(".*.tflink")]:
            remove(stray)
        live = self._live()
        self.versions.mkdir(exist_ok=True)
        numbers = [int(v.name) for v in self.versions.iterdir() if v.name.isdigit()]
        for v in self.versions.iterdir():
            if v.name != live:  # an interrupted build's version, or one a killed switch left behind
                remove(v)
        self.staging = self.versions / str(max(numbers, default=0) + 1)
        self.staging.mkdir()
        self.work.mkdir(parents=True, exist_ok=True)
        # The live output stays the earlier recipe's until the switch: a failed build does not take it over.
        owner = self.previous.get("recipe") if self.previous.get("written") else str(self.recipe)
        write_json(self.mark / MARKER, {**self.previous, "recipe": owner, "building": str(self.recipe),
                                        "status": "building",
                                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "pid": os.getpid(), "written": self.previous.get("written", [])})

    # ------------------------------------------------------------ commit
    def _live(self) -> str | None:
        """The name of the version `current` points to (None before the first switch)."""
        try:
            return Path(os.readlink(self.current)).name
        except OSError:
            return None

    def _ours(self, name: str) -> bool:
        """`OUT/name` is the link a build made (whatever the marker says: it may predate a killed switch)."""
        try:
            return os.readlink(self.out / name) == f"{MARK}/{CURRENT}/{name}"
        except OSError:
            return False

    def _link(self, link: Path, target: str) -> None:
        """Point `link` at `target` with one rename (never a moment without a link)."""
        tmp = link.parent / f".{link.name}.tflink"
        remove(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def commit(self, names: list[str]) -> None:
        """Publish the staged version: links for its names, then the switch of `current` (the one atomic step),
        then the links and the version it replaced are removed."""
        owned = set(self.previous.get("written", []))
        for name in names:
            target = self.out / name
            if (target.exists() or target.is_symlink()) and name not in owned and name != MANIFEST \
                    and not self._ours(name):
                raise OutputError(f"{target} exists and was not written by tuneforge; move it away and re-run")
        kill_point("links")
        legacy = [n for n in sorted(owned | {MANIFEST}) if (self.out / n).exists() and not self._ours(n)]
        if legacy:  # an output from before versions: the manifest goes first, so it never looks complete
            for name in [MANIFEST] + [n for n in legacy if n != MANIFEST]:
                remove(self.out / name)
        for name in names:
            if not self._ours(name):
                self._link(self.out / name, f"{MARK}/{CURRENT}/{name}")
                kill_point("link")
        kill_point("switch")
        self._link(self.current, f"{VERSIONS}/{self.staging.name}")
        kill_point("switched")
        for name in sorted(owned - set(names)):
            if self._ours(name):
                remove(self.out / name)  # a name the new version lacks: its link now dangles
        marker = {**self.previous, "recipe": str(self.recipe), "status": "complete", "written": sorted(names),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        marker.pop("pid", None)
        marker.pop("building", None)
        write_json(self.mark / MARKER, marker)
        kill_point("marker")
        for v in self.versions.iterdir():
            if v != self.staging:
                remove(v)

    def prune(self, keep: set[str]) -> None:
        """Remove work units this build did not use (older inputs, recipe or code)."""
        for stage in self.work.iterdir() if self.work.is_dir() else []:
            for unit in stage.iterdir():
                if f"{stage.name}/{unit.name}" not in keep:
                    remove(unit)

    def discard(self, full: bool = False) -> None:
        """After a failed build: drop its unfinished version, which no reader can see; on a full disk also the
        shard work (a cache), so that the next build, of this recipe or another, has the space back."""
        if self.staging.name != self._live():
            remove(self.staging)
        if full:
            remove(self.work)

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def kill_point(point: str) -> None:
    """Tests end the process here (`TUNEFORGE_TEST_DIE_AT=<point>`), as a kill -9 would."""
    if os.environ.get(_DIE_AT) == point:
        os._exit(137)


def published(out: str | Path) -> list[Path]:
    """The files an output publishes, relative to it, sorted (through its links; `.tuneforge/` left out)."""
    root = Path(out)
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if d != MARK]
        found += [(Path(folder) / f).relative_to(root) for f in files if (Path(folder) / f).is_file()]
    return sorted(found)
