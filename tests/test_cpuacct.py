"""provision/cpuacct.py (bench.edge --cpu): where a run's CPU went, read from /proc (the
pure parts, and a /proc written here)."""

from __future__ import annotations

from pathlib import Path

from provision import cpuacct as cpu

ID = "89eb0da2749e7f514fcace357ede5adf1e01c94748677f9bf80213f6de1ed4a3"
# Fields after the name, from a real `cat /proc/self/stat`: utime 14 and stime 15 of stat(5).
REST = "S 1 2 3 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 1 0 12345 1000 100"


def stat(comm: str, utime: int, stime: int, pid: int = 7) -> str:
    return f"{pid} ({comm}) " + REST.format(utime=utime, stime=stime)


def test_parse_stat_reads_user_and_system_ticks_of_a_name_with_spaces_and_parentheses() -> None:
    assert cpu.parse_stat(stat("gunicorn: worker (app)", 250, 40)) == (
        "gunicorn: worker (app)",
        290,
    )


def test_container_of_reads_cgroup_v1_and_v2_and_leaves_the_host_out() -> None:
    assert cpu.container_of(f"12:cpu,cpuacct:/docker/{ID}\n") == ID
    assert cpu.container_of(f"0::/system.slice/docker-{ID}.scope/init.scope\n") == ID
    assert cpu.container_of("0::/user.slice/user-0.slice/session-1.scope\n") is None


def test_machine_of_reads_this_checkout_s_containers_of_the_topology_only() -> None:
    assert cpu.machine_of("testbed-seed-web1-5f524c", "seed", "5f524c") == "web1"
    assert cpu.machine_of("testbed-hardened-db-ext-1-4f85a1", "hardened", "4f85a1") == "db-ext-1"
    assert cpu.machine_of("testbed-seed-web1-4f85a1", "seed", "5f524c") is None  # other clone
    assert cpu.machine_of("testbed-hardened-web1-5f524c", "seed", "5f524c") is None
    assert cpu.machine_of("something-else", "seed", "5f524c") is None


def test_difference_counts_new_processes_from_zero_and_a_reused_pid_as_new() -> None:
    before = {"10": (("web1", "nginx"), 100), "11": (("web1", "python"), 50)}
    after = {
        "10": (("web1", "nginx"), 160),  # 60 ticks
        "11": (("web2", "haproxy"), 30),  # pid reused by another program: 30 from zero
        "12": (("lb1", "haproxy"), 20),  # started meanwhile
    }
    used = cpu.difference(before, after, hz=100)
    assert used == {("web1", "nginx"): 0.6, ("web2", "haproxy"): 0.3, ("lb1", "haproxy"): 0.2}


def test_snapshot_keeps_the_testbed_s_processes_only(tmp_path: Path) -> None:
    for pid, comm, cgroup in (
        ("7", "nginx", f"0::/system.slice/docker-{ID}.scope\n"),
        ("8", "sshd", "0::/system.slice/ssh.service\n"),
    ):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "stat").write_text(stat(comm, 5, 5, int(pid)))
        (tmp_path / pid / "cgroup").write_text(cgroup)
    (tmp_path / "self").mkdir()
    assert cpu.snapshot({ID: "web1"}, tmp_path) == {"7": (("web1", "nginx"), 10)}


def test_table_says_per_thousand_requests_and_when_nothing_was_visible() -> None:
    used = {("web1", "python"): 2.0, ("lb1", "haproxy"): 0.5}
    text = cpu.table(used, requests=4000)
    assert "| web1 | python | 0.500 |" in text and "| lb1 | haproxy | 0.125 |" in text
    assert text.splitlines()[-1] == "| all | all | 0.625 |"
    assert "docker provider only" in cpu.table({}, 100)
