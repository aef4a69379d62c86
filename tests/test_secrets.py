"""Secrets: generated once, private, and the same for every thread that asks at once."""

from __future__ import annotations

import datetime as dt
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from provision import secrets, testkit


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


# The site CA: the one users trust, so it must not be able to vouch for any other site.
SITE_NAMES = ["www.foobar.com", "foobar.com"]
NETWORKS = ["192.168.56.0/24", "192.168.57.0/24", "127.0.0.1/32"]


def _openssl_verify(tmp_path: Path, ca_pem: bytes, leaf_pem: bytes, *args: str) -> str:
    """OpenSSL's own verdict (not this project's code): its output, or raises with it."""
    import subprocess

    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "leaf.pem").write_bytes(leaf_pem)
    res = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "ca.pem"),
            *args,
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    out = res.stdout + res.stderr
    if res.returncode != 0:
        raise AssertionError(out)
    return out


def test_openssl_accepts_the_site_certificate_from_the_site_ca(tmp_path: Path) -> None:
    authority = secrets.site_ca(SITE_NAMES, NETWORKS, base=tmp_path / "s")
    leaf = secrets.leaf(
        "site", SITE_NAMES, ["192.168.56.10", "127.0.0.1"], base=tmp_path / "s", authority=authority
    )
    out = _openssl_verify(
        tmp_path, authority.cert_pem, leaf.cert_pem, "-verify_hostname", "www.foobar.com"
    )
    assert out.strip().endswith("OK")


@pytest.mark.parametrize(
    ("dns", "ip"),
    [
        ("www.example.org", "192.168.56.10"),
        ("www.foobar.com", "203.0.113.7"),
        ("foobar.com.evil.test", "127.0.0.1"),
    ],
)
def test_a_certificate_for_any_other_name_signed_with_the_site_ca_key_fails_in_openssl(
    tmp_path: Path, dns: str, ip: str
) -> None:
    authority = secrets.site_ca(SITE_NAMES, NETWORKS, base=tmp_path / "s")
    with pytest.raises(AssertionError, match="permitted subtree violation"):
        _openssl_verify(
            tmp_path, authority.cert_pem, testkit.forged_certificate(authority, dns, ip).cert_pem
        )


def test_the_site_ca_constraints_are_critical_and_it_lives_a_year(tmp_path: Path) -> None:
    from cryptography import x509

    cert = secrets.site_ca(SITE_NAMES, NETWORKS, base=tmp_path).cert
    ext = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical  # a client that does not understand it must refuse the CA
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=366)


def test_the_site_ca_refuses_to_issue_for_a_name_outside_it(tmp_path: Path) -> None:
    authority = secrets.site_ca(SITE_NAMES, NETWORKS, base=tmp_path)
    with pytest.raises(secrets.NameOutsideAuthority, match="www.example.org"):
        secrets.leaf("x", ["www.example.org"], [], base=tmp_path, authority=authority)
    with pytest.raises(secrets.NameOutsideAuthority, match="10.9.9.9"):
        secrets.leaf("x", ["www.foobar.com"], ["10.9.9.9"], base=tmp_path, authority=authority)


def test_other_networks_reissue_the_site_ca_with_its_key_and_the_site_certificate_stays_valid(
    tmp_path: Path,
) -> None:
    base = tmp_path / "s"
    first = secrets.site_ca(SITE_NAMES, NETWORKS, base=base)
    leaf = secrets.leaf("site", SITE_NAMES, ["127.0.0.1"], base=base, authority=first)
    second = secrets.site_ca(SITE_NAMES, [*NETWORKS, "10.20.0.0/24"], base=base)
    assert second.cert_pem != first.cert_pem and second.key_pem == first.key_pem
    assert second.cert.not_valid_after_utc == first.cert.not_valid_after_utc
    again = secrets.leaf("site", SITE_NAMES, ["127.0.0.1"], base=base, authority=second)
    assert again.cert_pem == leaf.cert_pem
    _openssl_verify(tmp_path, second.cert_pem, leaf.cert_pem)


def test_a_site_ca_near_its_end_is_replaced_and_the_site_certificate_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "s"
    monkeypatch.setattr(secrets, "SITE_CA_DAYS", secrets.SITE_CA_RENEW_DAYS - 1)
    old = secrets.site_ca(SITE_NAMES, NETWORKS, base=base)
    old_leaf = secrets.leaf("site", SITE_NAMES, [], base=base, authority=old)
    monkeypatch.setattr(secrets, "SITE_CA_DAYS", 365)
    new = secrets.site_ca(SITE_NAMES, NETWORKS, base=base)
    assert new.key_pem != old.key_pem
    new_leaf = secrets.leaf("site", SITE_NAMES, [], base=base, authority=new)
    assert new_leaf.cert_pem != old_leaf.cert_pem
    _openssl_verify(tmp_path, new.cert_pem, new_leaf.cert_pem)
    with pytest.raises(AssertionError):
        _openssl_verify(tmp_path, new.cert_pem, old_leaf.cert_pem)
