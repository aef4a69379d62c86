"""Running `fab` as a user would, for the unit tests of its error messages."""

from __future__ import annotations

import subprocess
import sys

from provision import PROJECT_ROOT


def run_fab(*args: str) -> subprocess.CompletedProcess[str]:
    """`fab ARGS` from the project's root, its output captured and its exit code kept."""
    return subprocess.run(
        [sys.executable, "-m", "fabric", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
