"""Secrets generated at deploy time, kept in .testbed/secrets/ (mode 0700, files 0600).

Nothing here is ever committed, templated into a tracked file or printed: roles
push secrets to machines as `File` steps, and the engine never logs
file contents.

Two certificate authorities, both made here on first use:
- the **site CA** (`site-ca.crt`) signs only the site's certificate. It is the one users
  are told to trust (`fab ca`), so it is name-constrained (critical NameConstraints: the
  site's names, the topology's networks and 127.0.0.1) and lives SITE_CA_DAYS: trusting
  it system-wide cannot let it vouch for any other site, even if its key leaked.
- the **internal CA** (`ca.crt`) signs what the machines show each other (backends, the
  balancers' client certificate, MariaDB, the monitor). Only the machines and the
  operator's own tools trust it; its certificates carry bare host names that `fab scale`
  adds to, which a name constraint fixed at creation could not follow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets as pysecrets
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provision import STATE_DIR

SECRETS_DIR = STATE_DIR / "secrets"
CA_DAYS = 3650
"""The internal CA (trusted by the testbed's machines only)."""
SITE_CA_DAYS = 365
"""The site CA users trust: a year, replaced (a new key) by the deploy that finds fewer
than SITE_CA_RENEW_DAYS left, so a leaf issued then still fits inside it."""
SITE_CA_NAME = "webinfra-testbed site CA"
LEAF_DAYS = 90
"""Mozilla's profiles allow 366 days at most (browsers 398); 90 keeps a stolen key short-lived.
Every deploy renews a certificate with RENEW_BEFORE_DAYS or fewer left, and the
CertificateExpiringSoon alert fires at 14: a deploy a month keeps the site covered."""
RENEW_BEFORE_DAYS = 30
SITE_CA_RENEW_DAYS = LEAF_DAYS + RENEW_BEFORE_DAYS


class NameOutsideAuthority(ValueError):
    """A certificate asked for a name its CA's name constraints do not permit."""


def _dir(base: Path | None = None) -> Path:
    path = base or SECRETS_DIR
    path.mkdir(parents=True, mode=0o700, exist_ok=True)
    path.chmod(0o700)
    path.parent.chmod(0o700)
    return path


_LOCK = threading.RLock()
"""The deploy plans hosts in parallel threads: two of them must never generate the same
secret twice (each would push its own value)."""


def _write(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, mode 0600 (a private temporary file first)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _create_once(path: Path, data: bytes) -> None:
    """Create `path` with `data` unless it exists: another process may win, never both."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o600)
        with contextlib.suppress(FileExistsError):  # another process created it first
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def password(name: str, base: Path | None = None) -> str:
    """A password generated once and kept; the same on every later call."""
    path = _dir(base) / f"{name}.password"
    with _LOCK:
        if not path.exists():
            _create_once(path, pysecrets.token_urlsafe(24).encode())
        return path.read_text().strip()


BCRYPT_ROUNDS = 6
"""bcrypt's cost for the monitor's basic-auth users. The passwords are 32 random URL-safe
characters, beyond any brute force whatever the cost, and Prometheus checks a hash on every
remote write it receives; so the cost is kept low (the minimum is 4)."""


def bcrypt_hash(name: str, base: Path | None = None) -> str:
    """The bcrypt hash of password(name), computed once and kept (the salt is random:
    a hash made again would change the config it is written into at every deploy)."""
    import bcrypt

    path = _dir(base) / f"{name}.bcrypt"
    with _LOCK:
        secret = password(name, base).encode()
        if path.exists() and bcrypt.checkpw(secret, path.read_bytes().strip()):
            return path.read_text().strip()
        _write(path, bcrypt.hashpw(secret, bcrypt.gensalt(rounds=BCRYPT_ROUNDS)))
        return path.read_text().strip()


@dataclass(frozen=True)
class KeyPair:
    key_pem: bytes
    cert_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def bundle(self) -> bytes:
        """Certificate then key, as HAProxy's `crt` wants them."""
        return self.cert_pem + self.key_pem


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ca(base: Path | None = None) -> KeyPair:
    """The internal CA, created on first use."""
    with _LOCK:
        return _ca(base)


def _ca(base: Path | None = None) -> KeyPair:
    d = _dir(base)
    key_path, cert_path = d / "ca.key", d / "ca.crt"
    if key_path.exists() and cert_path.exists():
        return KeyPair(key_path.read_bytes(), cert_path.read_bytes())
    key = _key()
    cert = _authority_cert(key, "webinfra-testbed CA", _now() + dt.timedelta(days=CA_DAYS), None)
    _write(key_path, _pem(key))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return KeyPair(key_path.read_bytes(), cert_path.read_bytes())


def _authority_cert(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    not_after: dt.datetime,
    constraints: x509.NameConstraints | None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    return builder.sign(key, hashes.SHA256())


def name_constraints(names: Iterable[str], networks: Iterable[str]) -> x509.NameConstraints:
    """Permitted subtrees: these DNS names (and names under them) and these networks."""
    permitted: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(set(names))]
    nets = sorted({ipaddress.ip_network(n) for n in networks}, key=str)
    permitted += [x509.IPAddress(n) for n in nets]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def _constraints_of(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return set()
    return {f"{type(g).__name__}:{g.value}" for g in ext.permitted_subtrees or []}


def site_ca(names: Iterable[str], networks: Iterable[str], base: Path | None = None) -> KeyPair:
    """The site CA for these names and networks (see the module's docstring).

    Kept while it has more than SITE_CA_RENEW_DAYS left. When only the constraints change
    (another topology's networks) the certificate is issued again with the same key and end
    date, so the certificates it signed stay valid; when it expires, a new key.
    """
    with _LOCK:
        return _site_ca(name_constraints(names, networks), base)


def _site_ca(constraints: x509.NameConstraints, base: Path | None) -> KeyPair:
    d = _dir(base)
    key_path, cert_path = d / "site-ca.key", d / "site-ca.crt"
    wanted = {f"{type(g).__name__}:{g.value}" for g in constraints.permitted_subtrees or []}
    key: ec.EllipticCurvePrivateKey | None = None
    not_after = _now() + dt.timedelta(days=SITE_CA_DAYS)
    if key_path.exists() and cert_path.exists():
        current = KeyPair(key_path.read_bytes(), cert_path.read_bytes())
        left = current.cert.not_valid_after_utc - _now()
        if left > dt.timedelta(days=SITE_CA_RENEW_DAYS):
            if _constraints_of(current.cert) == wanted:
                return current
            loaded = serialization.load_pem_private_key(current.key_pem, password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            key, not_after = loaded, current.cert.not_valid_after_utc
    key = key or _key()
    cert = _authority_cert(key, SITE_CA_NAME, not_after, constraints)
    _write(key_path, _pem(key))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return KeyPair(key_path.read_bytes(), cert_path.read_bytes())


def site_ca_cert_path(base: Path | None = None) -> Path:
    """Where the site CA's certificate is (made by the first deploy; see `site.authority`)."""
    return (base or SECRETS_DIR) / "site-ca.crt"


def permits(authority: x509.Certificate, dns: Iterable[str], ips: Iterable[str]) -> list[str]:
    """The names among `dns` and `ips` that the authority's name constraints do not permit
    (none when it has no constraints)."""
    try:
        ext = authority.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    subtrees = list(ext.permitted_subtrees or [])
    domains = [str(g.value).lower() for g in subtrees if isinstance(g, x509.DNSName)]
    nets = [
        g.value
        for g in subtrees
        if isinstance(g, x509.IPAddress)
        and isinstance(g.value, ipaddress.IPv4Network | ipaddress.IPv6Network)
    ]
    bad = [
        n for n in dns if not any(n.lower() == d or n.lower().endswith("." + d) for d in domains)
    ]
    bad += [i for i in ips if not any(ipaddress.ip_address(i) in net for net in nets)]
    return bad


def ca_cert_path(base: Path | None = None) -> Path:
    ca(base)
    return _dir(base) / "ca.crt"


def _sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)
    }


def leaf(
    name: str,
    dns: list[str],
    ips: list[str],
    base: Path | None = None,
    renew: bool = False,
    client: bool = False,
    authority: KeyPair | None = None,
) -> KeyPair:
    """A certificate signed by `authority` (default: the internal CA), kept and reused while
    it fits: for a server
    (extended key usage serverAuth), or with `client` for a client (clientAuth only, so it
    can never serve a site, and no server certificate can pass as it).

    Issued again when asked (`renew`), when its names change, when it expires within
    RENEW_BEFORE_DAYS, when it was issued for longer than LEAF_DAYS, or when another key
    signed it. NameOutsideAuthority when the authority's constraints forbid a name.
    """
    with _LOCK:
        return _leaf(name, dns, ips, base, renew, client, authority or ca(base))


def _signed_by(cert: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return False
    ski = x509.SubjectKeyIdentifier.from_public_key(authority.public_key())
    return aki.key_identifier == ski.digest


def _leaf(
    name: str,
    dns: list[str],
    ips: list[str],
    base: Path | None,
    renew: bool,
    client: bool,
    authority: KeyPair,
) -> KeyPair:
    outside = permits(authority.cert, dns, ips)
    if outside:
        raise NameOutsideAuthority(
            f"certificate {name!r}: {', '.join(outside)} outside the name constraints of "
            f"{authority.cert.subject.rfc4514_string()}"
        )
    d = _dir(base)
    key_path, cert_path = d / f"{name}.key", d / f"{name}.crt"
    wanted = set(dns) | {str(ipaddress.ip_address(i)) for i in ips}
    if key_path.exists() and cert_path.exists() and not renew:
        current = KeyPair(key_path.read_bytes(), cert_path.read_bytes())
        expires = current.cert.not_valid_after_utc
        lifetime = expires - current.cert.not_valid_before_utc
        if (
            _sans(current.cert) == wanted
            and expires - _now() > dt.timedelta(days=RENEW_BEFORE_DAYS)
            # One issued under a longer-lived policy is replaced at the next deploy.
            and lifetime <= dt.timedelta(days=LEAF_DAYS, minutes=5)
            and _signed_by(current.cert, authority.cert)
        ):
            return current
    ca_key = serialization.load_pem_private_key(authority.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    alt_names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(
            min(_now() + dt.timedelta(days=LEAF_DAYS), authority.cert.not_valid_after_utc)
        )
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _pem(key))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return KeyPair(key_path.read_bytes(), cert_path.read_bytes())
