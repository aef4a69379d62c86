"""Load a script the deploy installs on the machines (a file, not a package module) so
its pure logic can be unit-tested here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]


def load(relative: str) -> Any:
    """The script at ROOT/relative, freshly executed as a module named after its file."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
