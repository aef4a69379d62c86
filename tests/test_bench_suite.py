"""bench/suite.py: the per-file table and the split of a junit report."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision import suitetimes as suite

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="acceptance.test_drills" name="test_kill" time="40.0"/>
<testcase classname="acceptance.test_firewall" name="test_matrix[a]" time="20.0"/>
<testcase classname="acceptance.test_firewall" name="test_matrix[b]" time="5.0"/>
<testcase classname="acceptance.test_https" name="test_hsts" time="3.0"/>
<testcase classname="acceptance.test_https" name="test_twenty_requests_alternate_x" time="2.0"/>
</testsuite></testsuites>
"""


def test_a_file_that_must_run_alone_and_a_named_test_count_as_alone() -> None:
    found = {c.name: c for c in suite.cases(JUNIT)}
    assert found["test_kill"].alone == "fault drills under load"
    assert found["test_twenty_requests_alternate_x"].alone.startswith("the order of requests")
    assert found["test_hsts"].alone == ""


def test_the_best_parallel_time_is_the_serial_tests_then_the_pinned_file() -> None:
    sp = suite.split(suite.cases(JUNIT))
    assert (sp.total, sp.alone, sp.reads, sp.pinned) == (70.0, 42.0, 28.0, 25.0)
    assert sp.best_parallel == 67.0  # the 3 s of test_hsts fit beside the firewall's 25 s


def test_the_report_lists_files_longest_first_and_says_what_could_be_saved() -> None:
    text = suite.report(suite.cases(JUNIT))
    rows = [line for line in text.splitlines() if line.startswith("| test_")]
    assert rows == [
        "| test_drills | 1 | 40.0 |",
        "| test_firewall | 2 | 25.0 |",
        "| test_https | 2 | 5.0 |",
    ]
    assert text.endswith("67.0 s at best, 3.0 s (4%) saved.")


def test_a_report_that_is_not_junit_or_is_empty_is_refused_with_the_file_named(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "suite.xml"
    bad.write_text("not xml")
    with pytest.raises(ValueError, match=f"cannot read {bad}"):
        suite.load(str(bad))
    bad.write_text("<testsuites><testsuite/></testsuites>")
    with pytest.raises(ValueError, match="holds no test case"):
        suite.load(str(bad))
