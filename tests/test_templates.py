"""provision/engine.render and the common role: /etc/hosts, the sshd drop-in, step names."""

from __future__ import annotations

import ipaddress

import pytest

from provision import topology
from provision.engine import File, HostContext, render
from provision.roles import common
from provision.topology import Topology

SEED = topology.load("seed")
HOST_NAMES = [h.name for h in SEED]
SITE_NAMES = SEED.site.names
HOSTS_HEADER = (
    "# Managed by webinfra-testbed from provision/roles/common/templates/hosts.j2; "
    "local edits are overwritten."
)


def rendered_hosts(viewer: str) -> str:
    host = SEED.hosts[viewer]
    return render("common", "hosts.j2", host=host, entries=common.hosts_entries(SEED, host))


def hosts_table(viewer: str) -> list[tuple[str, list[str]]]:
    """(address, names) of every non-comment line of the rendered /etc/hosts."""
    table = []
    for line in rendered_hosts(viewer).splitlines():
        if line.strip() and not line.startswith("#"):
            address, *names = line.split()
            table.append((address, names))
    return table


def addresses_of(viewer: str, name: str) -> list[str]:
    return [address for address, names in hosts_table(viewer) if name in names]


def sshd_settings() -> dict[str, str]:
    """Keyword -> value as sshd reads it: case-insensitive keywords, the first value wins."""
    settings: dict[str, str] = {}
    for line in render("common", "sshd.conf.j2", users=["vagrant"]).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, value = line.split(None, 1)
            settings.setdefault(keyword.lower(), value.strip())
    return settings


# --------------------------------------------------------------------------- /etc/hosts


@pytest.mark.parametrize("viewer", HOST_NAMES)
def test_hosts_file_starts_with_the_managed_by_header_naming_the_template(viewer: str) -> None:
    assert rendered_hosts(viewer).splitlines()[0] == HOSTS_HEADER


@pytest.mark.parametrize("viewer", HOST_NAMES)
@pytest.mark.parametrize("target", HOST_NAMES)
def test_hosts_file_lists_every_host_once_at_its_address_as_seen_by_the_viewer(
    viewer: str, target: str
) -> None:
    expected = str(SEED.address_for(SEED.hosts[viewer], SEED.hosts[target]))
    assert addresses_of(viewer, target) == [expected]


@pytest.mark.parametrize("viewer", HOST_NAMES)
def test_hosts_file_keeps_localhost(viewer: str) -> None:
    assert ("127.0.0.1", ["localhost"]) in hosts_table(viewer)


@pytest.mark.parametrize("viewer", HOST_NAMES)
def test_hosts_file_addresses_are_all_valid(viewer: str) -> None:
    for address, _ in hosts_table(viewer):
        ipaddress.ip_address(address)


@pytest.mark.parametrize(
    ("viewer", "network"),
    [
        pytest.param("client", "public", id="client-via-public"),
        pytest.param("web1", "private", id="web1-via-private"),
        pytest.param("monitor", "private", id="monitor-via-private"),
    ],
)
@pytest.mark.parametrize("site_name", SITE_NAMES)
def test_site_names_resolve_to_the_load_balancer_on_the_viewers_network(
    viewer: str, network: str, site_name: str
) -> None:
    assert addresses_of(viewer, site_name) == [str(SEED.hosts["lb1"].addresses[network])]


def test_hosts_entries_put_site_names_on_the_load_balancer_line(seed: Topology) -> None:
    entries = dict(common.hosts_entries(seed, seed.hosts["client"]))
    assert entries["192.168.56.10"] == ["lb1", *SITE_NAMES]


# --------------------------------------------------------------------------- sshd drop-in


def test_sshd_dropin_starts_with_the_managed_by_header() -> None:
    assert render("common", "sshd.conf.j2", users=["vagrant"]).startswith(
        "# Managed by webinfra-testbed from provision/roles/common/templates/sshd.conf.j2;"
    )


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("passwordauthentication", "no"),
        ("kbdinteractiveauthentication", "no"),
        ("permitrootlogin", "no"),
        ("permitemptypasswords", "no"),
        ("pubkeyauthentication", "yes"),
    ],
    ids=lambda v: str(v),
)
def test_sshd_dropin_hardens(keyword: str, value: str) -> None:
    assert sshd_settings().get(keyword) == value


def test_sshd_dropin_sets_each_keyword_once() -> None:
    keywords = [
        line.split()[0].lower()
        for line in render("common", "sshd.conf.j2", users=["vagrant"]).splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(keywords) == len(set(keywords))


# --------------------------------------------------------------------------- steps and determinism

STEPS = [(host, step) for host in SEED for step in common.steps(HostContext(SEED, host))]


@pytest.mark.parametrize(
    "name",
    sorted({step.name for _, step in STEPS} | {h.name for h in common.ROLE.handlers}),
)
def test_step_and_handler_names_are_sentences_ending_with_a_period(name: str) -> None:
    assert name[0].isupper()
    assert name.endswith(".")


def common_files(host: str) -> dict[str, File]:
    """The files the common role writes on `host`, by path."""
    steps = common.steps(HostContext(SEED, SEED.hosts[host]))
    return {s.path: s for s in steps if isinstance(s, File)}


@pytest.mark.parametrize("host", HOST_NAMES)
def test_hostname_file_names_the_host(host: str) -> None:
    assert common_files(host)["/etc/hostname"].content == f"{host}\n"


def test_sshd_dropin_step_is_validated_and_reloads_ssh() -> None:
    dropin = common_files("lb1")[common.SSHD_DROPIN]
    assert (dropin.validate, list(dropin.notify)) == ("/usr/sbin/sshd -t -f {path}", ["reload ssh"])
