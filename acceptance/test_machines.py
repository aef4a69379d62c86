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


@pytest.mark.parametrize("name", HOST_NAMES)
def test_a_container_machine_has_tmp_on_its_own_file_system_where_nothing_runs(
    machines: dict[str, testinfra.host.Host], name: str
) -> None:
    """/tmp is a file system of its own (docker's --tmpfs): filling it cannot fill the root
    one, and nothing set-user-ID, no device and no program runs from it. A VM keeps /tmp
    on its root file system (Debian's tmp.mount is not enabled there: docs/security.md)."""
    machine = machines[name]
    if machine.run("systemd-detect-virt --container").stdout.strip() in ("", "none"):
        pytest.skip("a virtual machine, not a container")
    mounts = [
        line.split()
        for line in machine.file("/proc/mounts").content_string.splitlines()
        if line.split()[1:2] == ["/tmp"]
    ]
    assert mounts, "/tmp is not a mount point: it shares the root file system"
    _, _, fstype, options, *_ = mounts[-1]
    assert fstype == "tmpfs"
    assert {"nosuid", "nodev", "noexec"} <= set(options.split(","))


# Written by hand from the hardening we promise (docs/security.md), not read from the code.
KERNEL_NETWORK = {
    "net.ipv4.conf.all.rp_filter": 1,
    "net.ipv4.conf.all.accept_redirects": 0,
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.all.accept_source_route": 0,
    "net.ipv4.conf.all.log_martians": 1,
    "net.ipv4.conf.default.log_martians": 1,
    "net.ipv4.tcp_syncookies": 1,
    "net.ipv6.conf.all.accept_redirects": 0,
}


@pytest.mark.parametrize("name", HOST_NAMES)
def test_the_kernel_network_settings_are_live(
    machines: dict[str, testinfra.host.Host], name: str
) -> None:
    keys = " ".join(KERNEL_NETWORK)
    live = dict(
        line.split(" = ", 1) for line in machines[name].check_output(f"sysctl {keys}").splitlines()
    )
    assert {k: int(v) for k, v in live.items()} == KERNEL_NETWORK


@pytest.mark.parametrize("name", HOST_NAMES)
def test_a_login_shell_cannot_dump_core_and_closes_when_idle(
    machines: dict[str, testinfra.host.Host], name: str
) -> None:
    out = machines[name].check_output("bash -lc 'ulimit -c; echo $TMOUT; TMOUT=0' 2>&1 || true")
    limit, tmout, *rest = out.splitlines()
    assert (limit, tmout) == ("0", "900")
    assert "readonly" in " ".join(rest)  # a user cannot switch the idle timeout off


@pytest.mark.parametrize("name", HOST_NAMES)
def test_the_installed_packages_match_their_checksums(
    machines: dict[str, testinfra.host.Host], name: str
) -> None:
    """debsums is there for an operator who suspects tampering; sshd and sudo verify."""
    result = machines[name].run("debsums -s openssh-server sudo")
    assert result.rc == 0 and not result.stdout.strip(), result.stdout + result.stderr
