"""Secrets: generated once, private, and the same for every thread that asks at once."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from provision import secrets


def test_a_password_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = secrets.password("x", base=tmp_path)
    assert secrets.password("x", base=tmp_path) == first
    assert len(first) >= 24


def test_secret_files_and_their_folder_are_private(tmp_path: Path) -> None:
    secrets.password("x", base=tmp_path / "s")
    secrets.ca(base=tmp_path / "s")
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    for path in (tmp_path / "s").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_hosts_planned_in_parallel_all_get_the_same_new_password(tmp_path: Path) -> None:
    # The deploy plans the hosts of a tier in parallel threads; this is how the first
    # clean-clone run of the database tier once failed.
    with ThreadPoolExecutor(max_workers=16) as pool:
        got = set(pool.map(lambda _: secrets.password("db", base=tmp_path), range(64)))
    assert len(got) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["db.password"]


def test_parallel_callers_share_one_ca(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        certs = set(pool.map(lambda _: secrets.ca(base=tmp_path).cert_pem, range(16)))
    assert len(certs) == 1
