""":class:`JudgeCache`: raw judge answers by sha256(judge id, prompt version, candidate, reference), in memory
and optionally in SQLite."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


def cache_key(judge_id: str, prompt_version: str, candidate: str, reference: str) -> str:
    """sha256 hex of the four strings (length-prefixed JSON, so no two tuples collide).

    >>> cache_key("j", "v1", "a", "b") == cache_key("j", "v1", "a", "b") != cache_key("j", "v1", "b", "a")
    True
    """
    blob = json.dumps([judge_id, prompt_version, candidate, reference], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """Raw judge answers by :func:`cache_key`: always in memory, optionally in an SQLite file.

    The SQLite file may be shared by several processes (e.g. DDP ranks); writes are
    ``INSERT OR REPLACE`` and each lookup falls back to the file when memory misses.
    ``hits`` / ``misses`` count lookups.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else None
        self._mem: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS judge_cache (key TEXT PRIMARY KEY, judge_id TEXT, "
                "prompt_version TEXT, raw TEXT NOT NULL, seconds REAL, created REAL)"
            )
            self._db.commit()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            rec = self._mem.get(key)
            if rec is None and self._db is not None:
                row = self._db.execute("SELECT raw, seconds FROM judge_cache WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    rec = {"raw": row[0], "seconds": row[1]}
                    self._mem[key] = rec
            if rec is None:
                self.misses += 1
            else:
                self.hits += 1
            return rec

    def put(
        self, key: str, raw: str, *, seconds: float | None = None, judge_id: str = "", prompt_version: str = ""
    ) -> None:
        with self._lock:
            self._mem[key] = {"raw": raw, "seconds": seconds}
            if self._db is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO judge_cache VALUES (?, ?, ?, ?, ?, ?)",
                    (key, judge_id, prompt_version, raw, seconds, time.time()),
                )
                self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            if self._db is not None:
                return self._db.execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0]
            return len(self._mem)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
