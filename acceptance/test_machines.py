"""Every machine is a real, booted system reached over SSH like a VM."""

from __future__ import annotations

import pytest
import testinfra

from acceptance.conftest import HOST_NAMES, TOPOLOGY


@pytest.mark.parametrize("name", HOST_NAMES)
def test_systemd_is_pid_1_and_the_system_is_running(
    machines: dict[str, testinfra.host.Host], name: str
) -> None:
    machine = machines[name]
    assert machine.process.get(pid=1).comm == "systemd"
    state = machine.run("systemctl is-system-running")
    failed = machine.check_output("systemctl --failed --no-legend --plain")
    assert state.stdout.strip() == "running", f"{name}: {state.stdout.strip()}; failed: {failed}"


@pytest.mark.parametrize("name", HOST_NAMES)
def test_hostname_is_the_topology_name(machines: dict[str, testinfra.host.Host], name: str) -> None:
    assert machines[name].sysctl("kernel.hostname") == name
    assert machines[name].file("/etc/hostname").content_string == f"{name}\n"


@pytest.mark.parametrize("name", HOST_NAMES)
def test_time_zone_is_utc(machines: dict[str, testinfra.host.Host], name: str) -> None:
    assert machines[name].check_output("date +%Z") == "UTC"


@pytest.mark.parametrize(
    "viewer,target",
    [(a, b) for a in HOST_NAMES for b in HOST_NAMES],
    ids=[f"{a}-resolves-{b}" for a in HOST_NAMES for b in HOST_NAMES],
)
def test_every_host_resolves_every_other_by_name(
    machines: dict[str, testinfra.host.Host], viewer: str, target: str
) -> None:
    expected = str(TOPOLOGY.address_for(TOPOLOGY.hosts[viewer], TOPOLOGY.hosts[target]))
    # Exactly one address: the one the viewer should use (getent ahostsv4 underneath).
    assert machines[viewer].addr(target).ipv4_addresses == [expected]


@pytest.mark.parametrize("name", HOST_NAMES)
def test_every_host_reaches_the_site_name_only_where_it_shares_a_network_with_the_lb(
    machines: dict[str, testinfra.host.Host], name: str
) -> None:
    viewer = TOPOLOGY.hosts[name]
    lb = TOPOLOGY.with_role("lb")[0]
    got = machines[name].addr(TOPOLOGY.site.name).ipv4_addresses
    # The balancers' floating address, on a network the viewer is on, is the site.
    floating = [
        str(v.address)
        for v in TOPOLOGY.vips.values()
        if v.role == "lb" and v.network in viewer.addresses
    ]
    if floating:
        assert got == floating[:1]
    elif TOPOLOGY.shared_networks(viewer, lb):
        assert got == [str(TOPOLOGY.address_for(viewer, lb))]
    else:
        assert got == []


CAP_NET_ADMIN, CAP_MKNOD = 12, 27


@pytest.mark.parametrize("name", HOST_NAMES)
def test_a_container_machine_cannot_make_devices_and_owns_its_network(
    machines: dict[str, testinfra.host.Host], name: str
) -> None:
    """The docker provider's machines run without CAP_MKNOD (no device node of the host's
    disks can be made inside), with NET_ADMIN (the machine owns its firewall). A VM has
    every capability, inside its own kernel; nothing to check there."""
    machine = machines[name]
    if machine.run("systemd-detect-virt --container").stdout.strip() in ("", "none"):
        pytest.skip("a virtual machine, not a container")
    bounding = next(
        int(line.split()[1], 16)
        for line in machine.file("/proc/1/status").content_string.splitlines()
        if line.startswith("CapBnd:")
    )
    assert not bounding & (1 << CAP_MKNOD), "CAP_MKNOD is in the bounding set"
    assert bounding & (1 << CAP_NET_ADMIN), "without NET_ADMIN it cannot own its firewall"
