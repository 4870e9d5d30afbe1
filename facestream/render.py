"""Output for people: one readable line per event, and summary tables."""

from __future__ import annotations

import unicodedata
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


@cache
def console() -> Console:
    """The console people read, made (and rich imported, ~20 ms) on first use: a command
    that prints only JSON lines, e.g. ``identities list --json``, never pays for it."""
    from rich.console import Console

    # soft_wrap: a line longer than the terminal stays one line (the terminal folds it), so
    # that a path or an image id is never broken in two, in a terminal or in a log.
    return Console(highlight=False, soft_wrap=True)


def describe_face(face: dict[str, Any]) -> str:
    if face["decision"] == "rejected":
        return f"[dim]rejected ({', '.join(face['reasons'])})[/]"
    if face["decision"] == "match":
        return f"[green]{face['identity']}[/] {face['similarity']:.2f}"
    if face["decision"] == "review":
        return f"[magenta]review: {face['identity']}?[/] {face['similarity']:.2f}"
    best = f" (best {face['similarity']:.2f})" if face.get("similarity") is not None else ""
    return f"[yellow]unknown[/]{best}"


def event_line(topic_kind: str, event: dict[str, Any]) -> str:
    image = f"[bold]{event['image_id']}[/]"
    if topic_kind == "dlq":
        return f"{image}  [red]error {event['reason']}[/]: {event['message']}"
    faces = event["faces"]
    if not faces:
        return f"{image}  no face"
    shown = ", ".join(describe_face(f) for f in faces[:6])
    more = f", +{len(faces) - 6} more" if len(faces) > 6 else ""
    return f"{image}  {len(faces)} face(s): {shown}{more}"


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


def rows_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    return table


def columns_text(title: str, rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A listing as plain aligned columns under a title, as ``kubectl get`` prints one: read,
    grepped and cut by people, without rich's import and layout (~45 ms of the 100-row
    ``identities list``) and without reading markup in enrolled names."""
    cells = [columns, *([_cell(row.get(c)) for c in columns] for row in rows)]
    sized = [[(text, _width(text)) for text in line] for line in cells]
    widths = [max(w for _, w in column) for column in zip(*sized, strict=True)]
    lines = ["  ".join(text + " " * (width - w) for (text, w), width in zip(line, widths,
             strict=True)).rstrip() for line in sized]  # fmt: skip
    return "\n".join([title, *lines])


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)  # a column awk can still count


def _width(text: str) -> int:
    """Terminal columns of ``text``: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
