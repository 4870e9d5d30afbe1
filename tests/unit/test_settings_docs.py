"""The README's settings table is the one generated from the settings model."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import setting_fields
from devtools.settings_table import README, section, table, value_text, with_table


def rows(markdown: str) -> dict[str, list[str]]:
    """The table's rows by variable: the cells after the first."""
    out = {}
    for line in markdown.splitlines()[2:]:
        variable, *cells = [c.strip() for c in line.strip("|").split(" | ")]
        out[variable.strip("`")] = cells
    return out


def test_readme_settings_table_is_the_generated_one() -> None:
    readme = README.read_text()
    assert section(readme) == table(), "run: python -m devtools.settings_table --write"
    assert with_table(readme) == readme  # --write would change nothing


def test_table_has_a_row_for_every_setting() -> None:
    variables = [field.variable for field in setting_fields()]
    assert list(rows(table())) == variables
    for missing_before in [
        "FACESTREAM_TOPICS__AUDIT",
        "FACESTREAM_GALLERY__HNSW_EF",
        "FACESTREAM_SIGHTINGS__TTL_S",
        "FACESTREAM_METRICS__MAX_SOURCES",
    ]:
        assert missing_before in variables


def test_every_setting_has_a_description() -> None:
    assert [f.variable for f in setting_fields() if not f.info.description] == []


def test_home_folder_defaults_render_the_same_on_every_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    here = table()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert table() == here
    assert rows(here)["FACESTREAM_GALLERY__PATH"][1] == "`~/.local/share/facestream/gallery`"
    assert rows(here)["FACESTREAM_CACHE_DIR"][1] == "`~/.cache/facestream`"
    assert value_text(Path("/srv/gallery")) == "`/srv/gallery`"


def test_production_column_shows_what_the_profile_changes() -> None:
    by_variable = rows(table())
    assert by_variable["FACESTREAM_KAFKA__TUNING__SESSION_TIMEOUT_S"][1:3] == ["`4.0`", "`60.0`"]
    assert by_variable["FACESTREAM_PROFILE"][1:3] == ["`embedded`", "`production`"]
    assert by_variable["FACESTREAM_BATCH__SIZE"][2] == ""  # the profile leaves it alone


def test_types_show_the_bounds_the_model_enforces() -> None:
    by_variable = rows(table())
    assert by_variable["FACESTREAM_MATCHING__THRESHOLD"][0] == "float in [-1, 1]"
    assert by_variable["FACESTREAM_METRICS__PORT"][0] == "int in [1, 65535]"
    assert by_variable["FACESTREAM_MODEL__DET_SIZE"][0] == "int > 0, multiple of 32"
    assert by_variable["FACESTREAM_GALLERY__API_KEY"][0] == "secret or none"


def test_the_type_shows_the_tightest_bounds_of_the_type_and_the_field() -> None:
    """Seconds (> 0) narrowed by ge=1 on the field read "> 0", and an optional field's own
    bound (le=90) was not shown at all: the table promised values the settings refuse."""
    types_ = {variable: cells[0] for variable, cells in rows(table()).items()}
    assert types_["FACESTREAM_RAY__LOOK_BACK_S"] == "float ≥ 1"
    assert types_["FACESTREAM_KAFKA__TUNING__SESSION_TIMEOUT_S"] == "float in (0, 90] or none"
