"""Secrets: generated once, private, and the same for every thread that asks at once."""

from __future__ import annotations

import datetime as dt
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

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


def test_a_leaf_lives_90_days_and_is_kept_while_more_than_30_are_left(tmp_path: Path) -> None:
    first = secrets.leaf("site", ["www.foobar.com"], ["192.168.56.10"], base=tmp_path)
    life = first.cert.not_valid_after_utc - first.cert.not_valid_before_utc
    # 90 days (Mozilla's intermediate profile allows 366 at most), plus the 5 min backdating.
    assert dt.timedelta(days=90) <= life <= dt.timedelta(days=90, minutes=5)
    again = secrets.leaf("site", ["www.foobar.com"], ["192.168.56.10"], base=tmp_path)
    assert again.cert_pem == first.cert_pem


def test_a_leaf_issued_for_397_days_is_replaced_at_the_next_deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secrets, "LEAF_DAYS", 397)
    old = secrets.leaf("site", ["www.foobar.com"], [], base=tmp_path)
    monkeypatch.setattr(secrets, "LEAF_DAYS", 90)
    new = secrets.leaf("site", ["www.foobar.com"], [], base=tmp_path)
    assert new.cert_pem != old.cert_pem
    assert new.cert.not_valid_after_utc - new.cert.not_valid_before_utc < dt.timedelta(days=91)
