"""The drill report: summary.json, summary.md and timeline.png from a hand-made drill."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from provision.drills import history as hist
from provision.drills.checker import Verdict, check
from provision.drills.report import (
    SUMMARY_JSON,
    SUMMARY_MD,
    TIMELINE_PNG,
    read_verdict,
    render_summary_text,
    write_report,
)
from tests.test_drill_checker import Drill, clean_failover, write, write_folder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, which always comes first."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def lost_write_drill() -> Drill:
    d = clean_failover()
    del d.counts["web2"]["drill-b 3"]
    d.sample(20.3, web1=True)
    return d


@pytest.fixture(scope="module")
def failed_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Verdict]:
    """A drill with a lost write and two writers after settling, written and reported."""
    folder = tmp_path_factory.mktemp("drill")
    write_folder(folder, lost_write_drill())
    history = hist.load(folder)
    verdict = check(history)
    write_report(folder, history, verdict)
    return folder, verdict


def test_the_report_writes_its_three_files(failed_report: tuple[Path, Verdict]) -> None:
    folder, _ = failed_report
    assert all((folder / name).is_file() for name in (SUMMARY_JSON, SUMMARY_MD, TIMELINE_PNG))


def test_summary_json_round_trips_to_the_same_verdict(
    failed_report: tuple[Path, Verdict],
) -> None:
    folder, verdict = failed_report
    assert read_verdict(folder) == verdict


def test_summary_json_names_the_verdict_the_drill_and_the_failed_invariants(
    failed_report: tuple[Path, Verdict],
) -> None:
    folder, _ = failed_report
    summary = json.loads((folder / SUMMARY_JSON).read_text())
    assert summary["verdict"] == "FAIL"
    assert summary["drill"]["fault"] == "pause"
    assert summary["drill"]["target"] == "web1"
    assert [i["name"] for i in summary["invariants"] if not i["ok"]] == [
        "acked_writes_present_once",
        "single_writable_node",
        "reads_see_only_kept_writes",
    ]


def test_the_timeline_is_a_png_of_about_1400_by_900_pixels(
    failed_report: tuple[Path, Verdict],
) -> None:
    folder, _ = failed_report
    assert png_size(folder / TIMELINE_PNG) == (1400, 900)
    assert (folder / TIMELINE_PNG).stat().st_size > 20_000  # drawn, not blank


def test_summary_md_states_the_verdict_and_marks_each_invariant(
    failed_report: tuple[Path, Verdict],
) -> None:
    folder, _ = failed_report
    text = (folder / SUMMARY_MD).read_text()
    assert text.startswith("# Drill: pause of web1 (db-primary): FAIL\n")
    assert "| ✗ | Every acknowledged write is present exactly once" in text
    assert "| ✓ | Reads (note lists and single notes) never fail." in text
    assert "![timeline](timeline.png)" in text


def test_summary_md_lists_the_offending_write(failed_report: tuple[Path, Verdict]) -> None:
    text = (failed_report[0] / SUMMARY_MD).read_text()
    offending = text.split("## Offending details")[1]
    assert "text 'drill-b 3'" in offending
    assert "+20.0 s: web1, web2 writable" in offending


def test_summary_md_shows_events_relative_to_fault_start(
    failed_report: tuple[Path, Verdict],
) -> None:
    text = (failed_report[0] / SUMMARY_MD).read_text()
    assert "| +5.0 | failover | web2 promoted |" in text
    assert "| +12.0 | settle_after |" in text
    assert "| -10.0 | warmup-start |" in text


def test_the_console_summary_names_the_failed_invariants() -> None:
    text = render_summary_text(check(lost_write_drill().history()))
    lines = text.splitlines()
    assert lines[0] == "Drill FAIL: 4 of 7 invariants hold"
    assert lines[1].startswith("  FAILED acked_writes_present_once: 35 acknowledged writes")
    assert "write outage 7.0 s, writes back at +6.0 s" in text


def test_the_console_summary_of_a_clean_drill_is_a_pass() -> None:
    text = render_summary_text(check(clean_failover().history()))
    assert text.splitlines()[0] == "Drill PASS: 7 of 7 invariants hold"
    assert "FAILED" not in text


def test_a_drill_with_no_samples_and_no_failure_still_gets_a_report(tmp_path: Path) -> None:
    d = Drill(ops=[write(-1.0, "a", db="web1"), write(1.0, "b", db="web1")], events=[])
    d.present("web2", "a")
    d.present("web2", "b")
    history = d.history()
    write_report(tmp_path, history, check(history))
    assert png_size(tmp_path / TIMELINE_PNG) == (1400, 900)
    assert json.loads((tmp_path / SUMMARY_JSON).read_text())["verdict"] == "PASS"
