"""webinfra-testbed: stand up a secured, monitored web infrastructure and prove it works."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("TESTBED_STATE_DIR") or PROJECT_ROOT / ".testbed")
"""Untracked folder for generated state and secrets (mode 0700, files 0600).
$TESTBED_STATE_DIR moves it (the unit tests point it at a temporary folder)."""
