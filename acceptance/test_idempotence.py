"""A second `fab deploy` changes nothing: it says so, and no file under /etc moves."""

from __future__ import annotations

import subprocess
import sys

import testinfra

from acceptance.conftest import HOST_NAMES
from provision import PROJECT_ROOT
from provision.ops.deploy import last_report

SNAPSHOT = (
    "find /etc -xdev -type f ! -name '*.testbed-new' -print0 | sort -z | xargs -0 sha256sum; "
    "find /etc -xdev -printf '%p %m %u %g\\n' | sort"
)


def _snapshot(machines: dict[str, testinfra.host.Host]) -> dict[str, str]:
    return {name: machines[name].check_output(SNAPSHOT) for name in HOST_NAMES}


def test_a_second_deploy_changes_no_file_under_etc_and_reports_no_changes(
    machines: dict[str, testinfra.host.Host],
) -> None:
    fab = [sys.executable, "-m", "fabric", "deploy"]
    first = subprocess.run(fab, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    before = _snapshot(machines)
    second = subprocess.run(fab, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    after = _snapshot(machines)

    changed = {}
    for name in HOST_NAMES:
        old, new = set(before[name].splitlines()), set(after[name].splitlines())
        if old != new:
            changed[name] = sorted(old ^ new)[:10]
    assert changed == {}, f"files under /etc changed on a second deploy: {changed}"
    assert last_report()["changes"] == []
    assert "No changes" in second.stdout
