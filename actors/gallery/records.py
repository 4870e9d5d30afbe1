"""The embedded gallery's identity records: one SQLite row per enrolled identity (name, photo
count, first enrolment), beside its shards (``identities.sqlite3``).

Light on purpose (no numpy, no engine): ``facestream identities list`` reads a closed
gallery's records through this module alone, and people run it in loops.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

RECORDS_FILE = "identities.sqlite3"


# The number of identities, kept by triggers in a one-row table: opening and counting never
# scan (COUNT(*) reads every row: ~25 ms at 200k identities). Rows change by UPSERT, never by
# INSERT OR REPLACE, whose implicit delete fires no trigger.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    identity TEXT PRIMARY KEY, name TEXT, photos INTEGER NOT NULL, enrolled_at TEXT);
CREATE TABLE IF NOT EXISTS total (identities INTEGER NOT NULL);
INSERT INTO total SELECT COUNT(*) FROM identities WHERE NOT EXISTS (SELECT 1 FROM total);
CREATE TRIGGER IF NOT EXISTS counted_in AFTER INSERT ON identities
    BEGIN UPDATE total SET identities = identities + 1; END;
CREATE TRIGGER IF NOT EXISTS counted_out AFTER DELETE ON identities
    BEGIN UPDATE total SET identities = identities - 1; END;
"""


class IdentityRecords:
    """Identity records in SQLite (which releases the GIL while it works)."""

    _COLUMNS = ("identity", "name", "photos", "enrolled_at")

    def __init__(self, path: Path) -> None:
        self.fresh = not path.exists()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        with self.lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # One transaction: one schema and one first count, however many processes open it.
            self.db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")

    def get(self, identities: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with self.lock:
            for start in range(0, len(identities), 500):
                chunk = identities[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self.db.execute(
                    f"SELECT * FROM identities WHERE identity IN ({marks})", chunk
                ):
                    out[row[0]] = dict(zip(self._COLUMNS, row, strict=True))
        return out

    def put(self, rows: list[dict[str, Any]]) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO identities VALUES (?, ?, ?, ?) ON CONFLICT (identity) DO UPDATE"
                " SET name = excluded.name, photos = excluded.photos,"
                " enrolled_at = excluded.enrolled_at",
                [tuple(r[c] for c in self._COLUMNS) for r in rows],
            )
            self.db.execute("COMMIT")

    def delete(self, identity: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM identities WHERE identity = ?", (identity,))

    def page(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT * FROM identities WHERE identity > ? ORDER BY identity LIMIT ?",
                ("" if after is None else after, limit),
            ).fetchall()
        return [dict(zip(self._COLUMNS, r, strict=True)) for r in rows]

    def count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT identities FROM total").fetchone()[0]

    def close(self) -> None:
        with self.lock, contextlib.suppress(Exception):
            self.db.close()
