"""Output for people: a long line is never broken inside a path or an image id."""

from __future__ import annotations

import subprocess
import sys

from facestream.render import columns_text, console


def test_a_path_longer_than_the_terminal_is_printed_on_one_line() -> None:
    path = "/tmp/" + "deep/" * 40 + "dangling.jpg"  # 217 characters: past any terminal width
    with console().capture() as captured:
        console().print(f"[yellow]skipped[/] {path}: not a file")
    assert captured.get().splitlines() == [f"skipped {path}: not a file"]


def test_the_cli_imports_rich_only_to_print_for_people() -> None:
    # Every command starts by importing the CLI; one that prints JSON lines only (e.g.
    # `identities list --json`, timed at 1M faces) must not pay rich's ~20 ms import.
    code = "import sys, facestream.cli; print([m for m in sys.modules if m.startswith('rich')])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_listing_keeps_its_columns_aligned_whatever_the_names() -> None:
    rows = [
        {"identity": "p1", "name": "[bold]Ann[/]", "photos": 3},  # markup stays text
        {"identity": "p22", "name": None, "photos": 12},  # no name: a dash, not an empty cell
        {"identity": "p3", "name": "王小明", "photos": 1},  # wide characters: two columns each
    ]
    text = columns_text("3 of 3 identities", rows, ["identity", "name", "photos"])
    assert text.splitlines() == [
        "3 of 3 identities",
        "identity  name          photos",
        "p1        [bold]Ann[/]  3",
        "p22       -             12",
        "p3        王小明        1",
    ]
