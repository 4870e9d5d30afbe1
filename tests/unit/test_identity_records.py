"""The embedded gallery's identity records: the count is kept by the database, so opening and
counting never scan the table, and it stays equal to the rows through every kind of write."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from actors.gallery.records import IdentityRecords


def row(identity: str, photos: int = 1) -> dict:
    return {"identity": identity, "name": None, "photos": photos, "enrolled_at": "2026-12-07"}


def rows_in(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM identities").fetchone()[0]


def test_the_count_follows_inserts_replacements_and_deletions(tmp_path: Path) -> None:
    path = tmp_path / "identities.sqlite3"
    records = IdentityRecords(path)
    records.put([row("ann"), row("bob")])
    records.put([row("ann", photos=3), row("cid")])  # ann replaced, not counted twice
    assert records.count() == 3 == rows_in(path)
    assert records.get(["ann"])["ann"]["photos"] == 3
    records.delete("bob")
    records.delete("nobody")
    assert records.count() == 2 == rows_in(path)
    records.close()


def test_records_made_before_the_kept_count_are_counted_once_on_open(tmp_path: Path) -> None:
    path = tmp_path / "identities.sqlite3"
    with sqlite3.connect(path) as db:  # the table as galleries made before the count hold it
        db.execute(
            "CREATE TABLE identities (identity TEXT PRIMARY KEY, name TEXT,"
            " photos INTEGER NOT NULL, enrolled_at TEXT)"
        )
        db.executemany("INSERT INTO identities VALUES (?, NULL, 1, NULL)", [("a",), ("b",)])
    first = IdentityRecords(path)
    second = IdentityRecords(path)  # a second open does not count again
    assert not first.fresh and first.count() == 2 == second.count()
    second.put([row("c")])
    assert first.count() == 3  # what another process wrote is counted too
    first.close()
    second.close()
