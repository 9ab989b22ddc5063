"""Content-addressed response cache in SQLite: one row per response, committed as it arrives.

A killed run loses at most the responses in flight; a re-run of an unchanged recipe finds every response here
and sends nothing. The key covers the model, the exact messages, the sampling parameters and the template's
version, never the endpoint's address or credentials.

Writes go to a writer thread that commits whatever has arrived since its last commit (group commit): the event
loop never waits on the disk, and a response is durable one commit after it arrives. The set of keys is read
once at open, so a miss costs no query.
"""

from __future__ import annotations

import hashlib
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tuneforge.common.io import dumps

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
  key TEXT PRIMARY KEY,
  model TEXT NOT NULL,
  content TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  finish_reason TEXT,
  created REAL NOT NULL
)
"""
_STOP = object()


def cache_key(model: str, messages: list[dict], params: dict, template_version: str) -> str:
    return hashlib.sha256(dumps({"model": model, "messages": messages, "params": params,
                                 "template": template_version}).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=30000")
    return db


class ResponseCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = _connect(path)
        self._db.execute(_SCHEMA)
        self._keys = {k for (k,) in self._db.execute("SELECT key FROM responses")}
        self._pending: dict[str, CachedResponse] = {}
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="tuneforge-cache-writer", daemon=True)
        self._writer.start()

    def get(self, key: str) -> CachedResponse | None:
        if key not in self._keys:
            return None
        pending = self._pending.get(key)
        if pending is not None:
            return pending
        row = self._db.execute("SELECT content, prompt_tokens, completion_tokens, finish_reason FROM responses "
                               "WHERE key = ?", (key,)).fetchone()
        return CachedResponse(*row) if row else None

    def put(self, key: str, model: str, resp: CachedResponse) -> None:
        if self._error is not None:
            raise self._error
        self._pending[key] = resp
        self._keys.add(key)
        self._queue.put((key, model, resp))

    def _write_loop(self) -> None:
        db = _connect(self.path)
        try:
            while True:
                first = self._queue.get()
                batch = [first]
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows = [b for b in batch if b is not _STOP]
                if rows:
                    now = time.time()
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                                   [(k, m, r.content, r.prompt_tokens, r.completion_tokens, r.finish_reason, now)
                                    for k, m, r in rows])
                    db.execute("COMMIT")
                    for k, _, _ in rows:
                        self._pending.pop(k, None)
                if len(rows) < len(batch):
                    return
        except BaseException as e:  # surfaced on the next put() and at close()
            self._error = e
        finally:
            db.close()

    def __len__(self) -> int:
        return len(self._keys)

    def close(self) -> None:
        """Wait for every pending row to be committed."""
        self._queue.put(_STOP)
        self._writer.join()
        self._db.close()
        if self._error is not None:
            raise self._error
