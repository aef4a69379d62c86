"""webinfra-testbed: stand up a secured, monitored web infrastructure and prove it works."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = PROJECT_ROOT / ".testbed"
"""Untracked folder for generated state and secrets (mode 0700, files 0600)."""
