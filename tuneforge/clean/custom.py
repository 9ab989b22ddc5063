"""A user's own filters and normalisers, named in the recipe by import path (`mypkg.filters:NoURLs`) with
parameters, the way NeMo Curator and Data-Juicer recipes add operators.

Naming a path in a recipe is asking tuneforge to import and run that code, as a build runs its own. The recipe
stays data: only the path and the parameters travel to the workers, and each worker imports the module by its
path (nothing user-made is pickled), so the module must be importable there (PYTHONPATH; on every Dask worker).
`check_user_ops` makes every object once when the recipe loads, so a misspelt path or bad parameters stop the
command before any work. The clean shards' cache key covers the parameters (in the recipe) and `code_digest`,
the sha256 of each named module's file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from pathlib import Path
from typing import Any

from tuneforge.clean.config import CleanConfig, UserOp
from tuneforge.clean.filters import BUILTIN_KEYS, badwords_digest
from tuneforge.common.errors import RecipeError
from tuneforge.common.records import Record


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _at(rec: Record) -> str:
    m = rec.get("meta") or {}
    return f"record {rec.get('id')!r} ({m.get('file')} line {m.get('line')})"


def make(op: UserOp, where: str, method: str) -> Any:
    """The object `op` names, made with its params; a RecipeError naming `where` if any of that fails."""
    module, attr = op.path.split(":")
    where = f"{where} {op.path!r}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise RecipeError(f"{where}: cannot import {module!r} ({e}); check the spelling, and that its folder is "
                          f"on PYTHONPATH (for Dask, on every worker)") from None
    except Exception as e:  # an error inside the user's module
        raise RecipeError(f"{where}: importing {module!r} failed: {_one_line(e)}") from None
    factory = getattr(mod, attr, None)
    if factory is None:
        raise RecipeError(f"{where}: module {module!r} ({mod.__file__}) has no {attr!r}")
    if not callable(factory):
        raise RecipeError(f"{where}: {attr!r} is a {type(factory).__name__}, not a class")
    try:
        obj = factory(**op.params)
    except Exception as e:
        raise RecipeError(f"{where}: making it with params {op.params} failed: {_one_line(e)}") from None
    if not callable(getattr(obj, method, None)):
        raise RecipeError(f"{where}: a {type(obj).__name__} has no `{method}` method, so it is not a "
                          f"{'filter' if method == 'filter' else 'normaliser'}")
    return obj


class UserFilter:
    """A user's filter as the clean stage calls it: its reasons are keyed by its name (`name: detail`)."""

    def __init__(self, op: UserOp, where: str) -> None:
        self.obj = make(op, where, "filter")
        own = getattr(self.obj, "name", None)
        self.name = op.name or (own if isinstance(own, str) else op.path.split(":")[1])
        self.where = where
        if self.name in BUILTIN_KEYS:
            raise RecipeError(f"{where} {op.path!r}: its name {self.name!r} is one of tuneforge's own reasons; set "
                              f"`name:` in the recipe")

    def filter(self, rec: Record) -> bool | tuple[bool, str]:
        try:
            res = self.obj.filter(rec)
        except Exception as e:  # the user's code failed: say which filter, on which record
            raise RecipeError(f"{self.where}: filter() raised {_one_line(e)} on {_at(rec)}") from e
        keep, why = (res[0], res[1]) if isinstance(res, tuple) and len(res) == 2 else (res, None)
        if keep is None or not isinstance(why, str | None):
            raise RecipeError(f"{self.where}: filter() returned {res!r} on {_at(rec)}; return True to keep the "
                              f"record, False or (False, 'why') to drop it")
        if keep:
            return True
        return False, f"{self.name}: {why}" if why else self.name


class UserNormalizer:
    def __init__(self, op: UserOp, where: str) -> None:
        self.obj = make(op, where, "normalize")
        self.where = where

    def __call__(self, text: str) -> str:
        try:
            out = self.obj.normalize(text)
        except Exception as e:
            raise RecipeError(f"{self.where}: normalize() raised {_one_line(e)} on the text {text[:40]!r}") from e
        if not isinstance(out, str):
            raise RecipeError(f"{self.where}: normalize() returned a {type(out).__name__}; return the text (str)")
        return out


def user_filters(cfg: CleanConfig) -> list[UserFilter]:
    out = [UserFilter(op, f"clean.filters.custom[{i}]") for i, op in enumerate(cfg.filters.custom)]
    names = [f.name for f in out]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise RecipeError(f"clean.filters.custom: two filters are named {dup[0]!r} (their rejects would be counted "
                          f"together); give one a `name:`")
    return out


def user_normalizers(cfg: CleanConfig) -> list[UserNormalizer]:
    return [UserNormalizer(op, f"clean.normalize.custom[{i}]") for i, op in enumerate(cfg.normalize.custom)]


def check_user_ops(cfg: CleanConfig) -> None:
    """Make every user filter and normaliser once (import, look up, construct): the recipe's up-front check."""
    user_filters(cfg)
    user_normalizers(cfg)


def code_digest(cfg: CleanConfig) -> str | None:
    """sha256 over the files of the modules the recipe's user ops name (None: there are none). Only the named
    module's own file counts: a change in a module it imports is not seen."""
    mods = sorted({op.path.split(":")[0] for op in [*cfg.filters.custom, *cfg.normalize.custom]})
    if not mods:
        return None
    h = hashlib.sha256()
    for m in mods:
        spec = importlib.util.find_spec(m)
        origin = spec.origin if spec is not None else None
        h.update(m.encode() + b"\0")
        if origin and Path(origin).is_file():
            h.update(hashlib.sha256(Path(origin).read_bytes()).digest())
    return h.hexdigest()


def input_digests(cfg: CleanConfig, recipe_dir: Path) -> list[str]:
    """What cleaning reads beyond the recipe's text, as cache-key parts: the user modules' files (`code_digest`)
    and the badwords list's bytes (the recipe names only its path). The build's clean keys and the pipeline's
    build fingerprint both take these, so an edited module or list cleans again."""
    out = []
    if (user := code_digest(cfg)) is not None:
        out.append(user)
    if (bad := badwords_digest(cfg.filters, recipe_dir)) is not None:
        out.append(f"badwords:{bad}")
    return out
