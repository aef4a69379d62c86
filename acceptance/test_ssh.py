"""sshd is hardened on every machine: keys only, no root login, as sshd itself reports."""

from __future__ import annotations

import socket

import paramiko
import pytest
import testinfra

from acceptance.conftest import HOST_NAMES
from provision.inventory import Endpoint

EFFECTIVE = {
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitrootlogin": "no",
    "permitemptypasswords": "no",
    "pubkeyauthentication": "yes",
    "x11forwarding": "no",
}


@pytest.mark.parametrize("name", HOST_NAMES)
@pytest.mark.parametrize("keyword,value", sorted(EFFECTIVE.items()))
def test_sshd_effective_setting(
    machines: dict[str, testinfra.host.Host], name: str, keyword: str, value: str
) -> None:
    effective = dict(
        line.split(" ", 1) for line in machines[name].check_output("sshd -T").splitlines()
    )
    assert effective[keyword] == value


def _transport(ep: Endpoint) -> paramiko.Transport:
    # Only a testbed machine's own sshd is dialled: Vagrant's ssh-config, or the inventory.
    sock = socket.create_connection((ep.hostname, ep.port), timeout=10)
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=10)
    return transport


@pytest.mark.parametrize("name", HOST_NAMES)
def test_sshd_offers_public_key_authentication_only(
    endpoints: dict[str, Endpoint], name: str
) -> None:
    transport = _transport(endpoints[name])
    try:
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_none(endpoints[name].user)
        assert refused.value.allowed_types == ["publickey"]
    finally:
        transport.close()


@pytest.mark.parametrize("name", HOST_NAMES)
def test_root_cannot_log_in_even_with_a_valid_key(
    endpoints: dict[str, Endpoint], name: str
) -> None:
    ep = endpoints[name]
    assert ep.key_file
    key = paramiko.RSAKey.from_private_key_file(ep.key_file)
    transport = _transport(ep)
    try:
        # The same key logs in as the vagrant user, so only the root rule can refuse it.
        assert transport.auth_publickey(ep.user, key) == []
    finally:
        transport.close()
    transport = _transport(ep)
    try:
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_publickey("root", key)
    finally:
        transport.close()
