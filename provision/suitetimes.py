"""Where the acceptance suite's time goes (a pytest junit report), and what running its
read-only tests in parallel could save at most. The CLI is bench/suite.py; the figures are
in docs/performance.md ("Seed, test by test").

The split is by test, from what each test changes or counts (ALONE_FILES, ALONE_TESTS,
with the reason for each); a read-only test of a file whose fixtures must stay on one
worker (PINNED) sets the floor any number of workers cannot go under.
"""

from __future__ import annotations

import collections
import xml.etree.ElementTree as ET
from dataclasses import dataclass

ALONE_FILES = {
    "test_drills": "fault drills under load",
    "test_failover": "a primary killed, stopped or switched over",
    "test_reboot": "a machine restarted",
    "test_on_the_wire": "re-encryption switched on and back (deploys)",
    "test_edge": "the edge limits switched (deploys) and hit from the client's one address",
    "test_load": "counts Locust's requests at a fixed rate",
    "test_idempotence": "a full deploy",
    "test_deploy_safety": "a deploy while a node is away",
    "test_web": "its refusals compare the newest note's id before and after",
    "test_scale": "adds and removes a machine",
}
"""Files where every test must run alone, and why."""

ALONE_TESTS = {
    "twenty_requests_alternate": "the order of requests between the web servers",
    "renewing_the_certificate": "a deploy step (tls.renew) under requests",
    "within_a_second": "a timing promise (a note on every replica within 1 s)",
    "backup_then_restore": "a replica restored",
    "three_independent_counts": "counts the site's requests three ways",
    "haproxy_stops_fires": "a balancer's HAProxy stopped",
    "log_parsing_counts": "counts failed logins and firewall drops by host",
    "replica_stopped_and_made": "a replica stopped and made writable",
    "four_faults_at_once": "four services stopped or cut",
    "firewall_s_drops_reach": "the firewall's log budget (10 lines a minute per host)",
    "nothing_is_lost": "the monitor's rsyslog stopped",
}
"""Tests (by a part of their name) that must run alone in files that are otherwise read-only."""

PINNED = {"test_firewall": "its probe listeners are a module fixture (one worker)"}


@dataclass
class Case:
    file: str
    name: str
    seconds: float

    @property
    def alone(self) -> str:
        """Why this test must run alone; "" when it only reads."""
        if self.file in ALONE_FILES:
            return ALONE_FILES[self.file]
        return next((why for part, why in ALONE_TESTS.items() if part in self.name), "")


def cases(junit_xml: str) -> list[Case]:
    root = ET.fromstring(junit_xml)
    return [
        Case(tc.get("classname", "").split(".")[-1], tc.get("name", ""), float(tc.get("time", 0)))
        for tc in root.iter("testcase")
    ]


@dataclass
class Split:
    total: float
    alone: float
    reads: float
    pinned: float

    @property
    def best_parallel(self) -> float:
        """The suite's time with the read-only tests on unlimited workers: the tests that
        run alone, then the longest pinned file (or nothing)."""
        return self.alone + self.pinned


def split(found: list[Case]) -> Split:
    alone = sum(c.seconds for c in found if c.alone)
    reads = sum(c.seconds for c in found if not c.alone)
    pinned = max(
        (sum(c.seconds for c in found if c.file == f and not c.alone) for f in PINNED),
        default=0.0,
    )
    return Split(alone + reads, alone, reads, pinned)


def report(found: list[Case]) -> str:
    per: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for c in found:
        per[c.file][0] += 1
        per[c.file][1] += c.seconds
    lines = ["| file | tests | seconds |", "|---|---|---|"]
    for f, (n, s) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {f} | {n:.0f} | {s:.1f} |")
    sp = split(found)
    saved = sp.total - sp.best_parallel
    lines += [
        "",
        f"total {sp.total:.1f} s: {sp.alone:.1f} s in tests that must run alone, "
        f"{sp.reads:.1f} s in tests that only read ({sp.pinned:.1f} s of it pinned to one "
        f"worker). With unlimited workers for the reads: {sp.best_parallel:.1f} s at best, "
        f"{saved:.1f} s ({saved / sp.total:.0%}) saved.",
    ]
    return "\n".join(lines)


def load(path: str) -> list[Case]:
    """The test cases of junit report `path`; ValueError naming the file when it cannot be
    read, is not junit XML, or holds no test case."""
    try:
        with open(path, encoding="utf-8") as fh:
            found = cases(fh.read())
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not found:
        raise ValueError(f"{path} holds no test case")
    return found
