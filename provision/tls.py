"""TLS policy as data: Mozilla's "intermediate" profile, rendered by the lb and web roles.

Source: Mozilla SSL Configuration Generator, intermediate configuration (guideline
5.7), https://ssl-config.mozilla.org/#server=haproxy&version=2.6&config=intermediate
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TlsPolicy:
    name: str
    source: str
    min_version: str
    ciphers: tuple[str, ...]
    """TLS 1.2 cipher list (OpenSSL names), in order of preference."""
    ciphersuites: tuple[str, ...]
    """TLS 1.3 cipher suites."""
    groups: tuple[str, ...]
    """Key exchange groups (curves) offered, OpenSSL names."""
    hsts_max_age: int

    @property
    def cipher_string(self) -> str:
        return ":".join(self.ciphers)

    @property
    def ciphersuite_string(self) -> str:
        return ":".join(self.ciphersuites)

    @property
    def group_string(self) -> str:
        return ":".join(self.groups)


INTERMEDIATE = TlsPolicy(
    name="Mozilla intermediate (5.7)",
    source="https://ssl-config.mozilla.org/#server=haproxy&version=2.6&config=intermediate",
    min_version="TLSv1.2",
    ciphers=(
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ),
    ciphersuites=(
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    ),
    # The profile's "tls_curves": OpenSSL's default would also offer X448 and secp521r1.
    groups=("X25519", "prime256v1", "secp384r1"),
    hsts_max_age=63072000,
)
