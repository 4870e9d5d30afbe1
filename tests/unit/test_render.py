"""Output for people: a long line is never broken inside a path or an image id."""

from __future__ import annotations

from facestream.render import console


def test_a_path_longer_than_the_terminal_is_printed_on_one_line() -> None:
    path = "/tmp/" + "deep/" * 40 + "dangling.jpg"  # 217 characters: past any terminal width
    with console.capture() as captured:
        console.print(f"[yellow]skipped[/] {path}: not a file")
    assert captured.get().splitlines() == [f"skipped {path}: not a file"]
