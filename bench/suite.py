"""Where the acceptance suite's time goes, and what running its read-only tests in
parallel could save at most: docs/performance.md ("Seed, test by test").

    .venv/bin/pytest acceptance -q --junitxml=.testbed/suite.xml   # on a running testbed
    .venv/bin/python -m bench.suite .testbed/suite.xml

Prints the seconds per file (setup, call and teardown, from pytest's junit report; a
module fixture counts in its first test) and splits the total into the tests that must
run alone and those that only read. The split is by test, from what each test changes or
counts (the ALONE lists in provision/suitetimes.py, each entry with its reason); a
read-only test of a file whose fixtures must stay on one worker (PINNED) is the floor
any number of workers cannot go under.
"""

from __future__ import annotations

import argparse
import sys

from provision.suitetimes import load, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description="Seconds per acceptance test file from a pytest junit report, and what "
        "parallel read-only tests could save at most.",
    )
    parser.add_argument("junit", help="pytest's --junitxml report of an acceptance run")
    args = parser.parse_args(argv)
    try:
        found = load(args.junit)
    except ValueError as exc:
        print(f"bench.suite: {exc}", file=sys.stderr)
        return 2
    print(report(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
