"""The firewall lets through exactly the topology's flows, proved with real packets.

Every probe starts inside a machine (never from the host, which can reach the
docker networks directly and would pass for the wrong reason) and targets every
address of the destination, its management address included. While the tests
run, a probe listener answers on each flow port of each destination where no
service listens yet, so an allowed flow connects and a forbidden one times out.
"""

from __future__ import annotations

import ipaddress
import shlex
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import testinfra

from acceptance.conftest import HOST_NAMES, TOPOLOGY, not_allowed
from acceptance.probe import LISTENER, probe_script
from acceptance.seed_matrix import SEED_OPEN
from provision import firewall

FLOW_PORTS = sorted({f.port for f in TOPOLOGY.flows if f.proto == "tcp"})
PORTS = sorted({22, *FLOW_PORTS})
PAIRS = [(s, d) for s in HOST_NAMES for d in HOST_NAMES if s != d]
CLIENT = TOPOLOGY.with_role("client")[0]
LB = TOPOLOGY.with_role("lb")[0]
Machines = dict[str, testinfra.host.Host]


def _listening(machine: testinfra.host.Host) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket (ss, through testinfra's socket module)."""
    result = set()
    for spec in machine.socket.get_listening_sockets():
        proto, _, local = spec.partition("://")
        if proto == "tcp":
            addr, _, port = local.rpartition(":")
            result.add((addr, int(port)))
    return result


def _addresses(machine: testinfra.host.Host, family: str = "inet") -> list[str]:
    """Every global address of `family` on every interface (loopback and link-local left out,
    as `ip addr show scope global` leaves them out)."""
    return [
        addr
        for name in machine.interface.names()
        for addr in machine.interface(name, family).addresses
        if not (ip := ipaddress.ip_address(addr)).is_loopback and not ip.is_link_local
    ]


@pytest.fixture(scope="module")
def listeners(machines: Machines) -> Iterator[None]:
    """Start a probe listener on each flow port of each host where nothing listens."""
    started = []
    for name in HOST_NAMES:
        host = TOPOLOGY.hosts[name]
        wanted = {
            p.port for p in TOPOLOGY.allowed_paths() if p.dest.name == name and p.proto == "tcp"
        }
        busy = {port for _, port in _listening(machines[name])}
        ports = sorted(wanted - busy)
        if ports:
            machines[name].check_output(
                "systemd-run --unit=testbed-probe-listener --collect python3 -c "
                + shlex.quote(LISTENER)
                + " "
                + " ".join(map(str, ports))
            )
            started.append(host.name)
    time.sleep(1)
    yield
    for name in started:
        machines[name].run("systemctl stop testbed-probe-listener")


@pytest.fixture(scope="module")
def addresses(machines: Machines) -> dict[str, list[str]]:
    """Every IPv4 address of every machine: topology networks and management alike."""
    return {name: _addresses(machines[name]) for name in HOST_NAMES}


def _network_of(address: str) -> str | None:
    for net in TOPOLOGY.networks.values():
        if ipaddress.ip_address(address) in net.cidr:
            return net.name
    return None


@pytest.fixture(scope="module")
def matrix(
    machines: Machines, listeners: None, addresses: dict[str, list[str]]
) -> dict[tuple[str, str, str, int], str]:
    """(source, destination, address, port) -> open|refused|filtered, probed for real."""
    results: dict[tuple[str, str, str, int], str] = {}

    def probe_from(src: str) -> dict[tuple[str, str, str, int], str]:
        targets = [(d, a, p) for d in HOST_NAMES if d != src for a in addresses[d] for p in PORTS]
        stdin = "\n".join(f"{a} {p}" for _, a, p in targets)
        script = probe_script(detail=True)
        out = machines[src].check_output(
            f"printf %s {shlex.quote(stdin)} | python3 -c {shlex.quote(script)}"
        )
        by_target: dict[tuple[str, int], str] = {}
        for line in out.splitlines():
            a, p, r, *detail = line.split()
            by_target[(a, int(p))] = r
            if detail:
                DETAIL.setdefault((src, a, int(p)), []).append(" ".join(detail))
        return {(src, d, a, p): by_target[(a, p)] for d, a, p in targets}

    def forbidden_open(
        burst: dict[tuple[str, str, str, int], str],
    ) -> set[tuple[str, str, str, int]]:
        return {key for key, got in burst.items() if got == "open" and not _allowed(*key)}

    # One source after another: all at once was faster, but one run of it reported two
    # forbidden connections as open that no later run could reproduce; a security test
    # must not leave that doubt.
    for src in HOST_NAMES:
        first = probe_from(src)
        results.update(first)
        if not forbidden_open(first):
            continue
        # A forbidden connection reported open is probed again: the same burst from the
        # same source, then alone three times (in _evidence). The rules do not change while
        # this runs, so a hole in them connects again and the test fails on it. CI saw a
        # lone "open" twice, in two hardened runs of many (some 16,000 probes each), that the
        # rules and their packet counters, read right after, could not explain: one that
        # no re-probe reproduces is reported as a warning, with its evidence.
        # Only a one-off can be excused: the four other probes must all have been stopped
        # as a forbidden connection is ("refused" would mean the packet got through), and
        # at most one target in the whole matrix (a hole that lets a few connections
        # through, a rate-limited ACCEPT, would show as several).
        second = probe_from(src)
        stopped = {not_allowed(src), "filtered"}
        for key in sorted(forbidden_open(first) | forbidden_open(second)):
            EVIDENCE[key] = _evidence(machines, *key)
            seen = [first[key], second[key], *EVIDENCE_PROBES[key]]
            results[key] = "open"
            EVIDENCE[key] += f"\n  the open ones: {DETAIL.get((key[0], key[2], key[3]), [])}"
            if seen.count("open") == 1 and all(r in stopped for r in seen if r != "open"):
                UNREPRODUCED[key] = f"seen {seen}" + EVIDENCE[key]
    if len(UNREPRODUCED) > 1:
        UNREPRODUCED.clear()  # more than one: none is excused
    return results


EVIDENCE: dict[tuple[str, str, str, int], str] = {}
"""What was seen right after a forbidden connection was reported open: the same probe
again, and both ends' rules with their packet counters, for the failure message."""
EVIDENCE_PROBES: dict[tuple[str, str, str, int], list[str]] = {}
"""The three lone probes behind EVIDENCE."""
DETAIL: dict[tuple[str, str, int], list[str]] = {}
"""(source, address, port) -> for each burst that found it open: where the connection left
from and whom it reached (acceptance/probe.py's detail)."""
UNREPRODUCED: dict[tuple[str, str, str, int], str] = {}
"""The one forbidden connection reported open once that no re-probe reproduced (each of
them stopped as a forbidden one is), if there is exactly one in the matrix."""


def _allowed(source: str, dest: str, address: str, port: int) -> bool:
    network = _network_of(address) or "management"
    at = ipaddress.IPv4Address(address) if network != "management" else None
    return TOPOLOGY.is_allowed(source, dest, network, port, address=at)


def _evidence(machines: Machines, src: str, dest: str, address: str, port: int) -> str:
    again = [
        machines[src]
        .check_output(f"echo {address} {port} | python3 -c {shlex.quote(probe_script())}")
        .split()[-1]
        for _ in range(3)
    ]
    EVIDENCE_PROBES[(src, dest, address, port)] = again
    out = machines[src].run("iptables -w -L OUTPUT -v -n --line-numbers").stdout
    into = machines[dest].run("iptables -w -L INPUT -v -n --line-numbers").stdout
    owner = machines[dest].run(f"ss -Htlnp 'sport = :{port}'").stdout
    return (
        f"\n  probed 3 more times at once: {again}"
        f"\n  {dest}'s listener: {owner.strip()}"
        f"\n  {src} OUTPUT:\n{out}\n  {dest} INPUT:\n{into}"
    )


@pytest.mark.skipif(TOPOLOGY.name != "seed", reason="the hand-written matrix is seed's")
def test_seed_opens_exactly_the_hand_written_matrix(
    matrix: dict[tuple[str, str, str, int], str],
) -> None:
    # Independent of the rule generator: acceptance/seed_matrix.py is written by hand.
    opened = {key for key, result in matrix.items() if result == "open"}
    for key in sorted(opened & UNREPRODUCED.keys()):
        warnings.warn(
            f"{key} was reported open once and never again: {UNREPRODUCED[key]}", stacklevel=1
        )
        opened.discard(key)
    assert sorted(opened - SEED_OPEN) == [], "open, and the design does not allow it"
    assert sorted(SEED_OPEN - opened) == [], "the design allows it, and it does not connect"


@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize("source,dest", PAIRS, ids=[f"{s}->{d}" for s, d in PAIRS])
def test_connection_succeeds_exactly_when_the_topology_allows_it(
    matrix: dict[tuple[str, str, str, int], str],
    addresses: dict[str, list[str]],
    source: str,
    dest: str,
    port: int,
) -> None:
    wrong = []
    for address in addresses[dest]:
        network = _network_of(address) or "management"
        allowed = _allowed(source, dest, address, port)
        got = matrix[(source, dest, address, port)]
        # From a host whose egress is closed, a forbidden connection is refused by its own
        # rules ("denied"), unless the kernel's ICMP rate limit (50 at once, 1,000/s) ate
        # the refusal in the matrix's burst: then it times out ("filtered"). Either way it
        # does not connect; test_a_host_cannot_open_a_connection_to_the_docker_host shows
        # "denied" itself, with few enough probes.
        expected = {"open"} if allowed else {not_allowed(source), "filtered"}
        key = (source, dest, address, port)
        if got == "open" and key in UNREPRODUCED:
            warnings.warn(
                f"{source} -> {address} ({network}) port {port} was reported open once and "
                f"never again: {UNREPRODUCED[key]}",
                stacklevel=1,
            )
            continue
        if got not in expected:
            want = " or ".join(sorted(expected))
            wrong.append(f"{address} ({network}) port {port}: expected {want}, got {got}")
            wrong[-1] += EVIDENCE.get((source, dest, address, port), "")
    assert not wrong, f"{source} -> {dest}: " + "; ".join(wrong)


def test_a_scan_from_the_client_finds_only_the_site_ports_on_the_load_balancers(
    machines: Machines, listeners: None, addresses: dict[str, list[str]]
) -> None:
    client = machines[CLIENT.name]
    if not client.package("nmap").is_installed:
        client.check_output(
            "DEBIAN_FRONTEND=noninteractive "
            "apt-get install -y -q --no-install-recommends nmap >/dev/null"
        )
    targets = sorted({a for name in HOST_NAMES if name != CLIENT.name for a in addresses[name]})
    # Every port of every address, each probe sent twice at most: a filtered port never
    # answers, so the rate sets the time. 60,000 probes/s took 49 s on hardened's 19
    # addresses (20,000: 127 s; 100,000: 46 s, the machine's limit) and found the same.
    out = client.check_output(
        "nmap -n -Pn -sS -p- --min-rate 60000 --max-retries 1 -oG - " + " ".join(targets)
    )
    found = set()
    for line in out.splitlines():
        if line.startswith("Host:") and "Ports:" in line:
            addr = line.split()[1]
            for entry in line.split("Ports:")[1].split(","):
                fields = entry.strip().split("/")
                if len(fields) > 1 and fields[1] == "open":
                    found.add((addr, int(fields[0])))
    # Exactly what the topology lets the client reach: the load balancer's site ports (at
    # the balancers' floating address when they share one), nothing else.
    expected = {
        (str(p.address), p.port) for p in TOPOLOGY.allowed_paths() if p.source.name == CLIENT.name
    }
    assert expected and {port for _, port in expected} == {
        TOPOLOGY.port("site-http"),
        TOPOLOGY.port("site-https"),
    }
    assert found == expected


@pytest.mark.parametrize("name", HOST_NAMES)
def test_every_listening_socket_is_an_allowed_flow_or_loopback(
    machines: Machines, name: str
) -> None:
    allowed = {22} | {p.port for p in TOPOLOGY.allowed_paths() if p.dest.name == name}
    surprises = [
        f"{addr}:{port}"
        for addr, port in _listening(machines[name])
        if not addr.startswith("127.") and addr != "::1" and port not in allowed
    ]
    assert not surprises, f"{name} listens outside the flows: {surprises}"


@pytest.mark.parametrize("name", HOST_NAMES)
@pytest.mark.parametrize("version", [4, 6], ids=["iptables", "ip6tables"])
def test_input_and_forward_drop_by_default(machines: Machines, name: str, version: int) -> None:
    rules = machines[name].iptables.rules(version=version)  # iptables -t filter -S
    assert "-P INPUT DROP" in rules
    assert "-P FORWARD DROP" in rules


@pytest.fixture(scope="module")
def link_local(machines: Machines) -> dict[str, dict[str, tuple[str, str]]]:
    """host -> {its IPv4 address: (its interface there, that interface's IPv6 link-local
    address)}. The machines have no global IPv6 address, but IPv6 is on: each interface
    has a link-local one, reachable from every machine on the same network."""
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for name in HOST_NAMES:
        v4: list[tuple[str, str]] = []  # an interface may hold several (a floating address)
        v6: dict[str, str] = {}
        for line in machines[name].check_output("ip -o addr show").splitlines():
            words = line.split()
            iface, family, cidr = words[1], words[2], words[3]
            if family == "inet":
                v4.append((cidr.split("/")[0], iface))
            elif family == "inet6" and cidr.startswith("fe80:"):
                v6[iface] = cidr.split("/")[0]
        found[name] = {a: (i, v6[i]) for a, i in v4 if i in v6}
    return found


NEIGHBOURS = [
    (s, d) for s, d in PAIRS if TOPOLOGY.shared_networks(TOPOLOGY.hosts[s], TOPOLOGY.hosts[d])
]


@pytest.fixture(scope="module")
def v6_probes(
    machines: Machines, listeners: None, link_local: dict[str, dict[str, tuple[str, str]]]
) -> dict[tuple[str, str], list[str]]:
    """(source, dest) -> the probe's lines over IPv6: every link-local address of every
    network the two share, and any global IPv6 address (a VM may have one), for SSH and
    every flow port. One probe run per source, for all its neighbours at once."""
    results: dict[tuple[str, str], list[str]] = {}

    def probe_from(source: str) -> None:
        src = TOPOLOGY.hosts[source]
        targets: dict[str, str] = {}  # "address port" -> dest
        for dest in HOST_NAMES:
            if (source, dest) not in NEIGHBOURS:
                continue
            dst = TOPOLOGY.hosts[dest]
            for net in TOPOLOGY.shared_networks(src, dst):
                iface, _ = link_local[source][str(src.addresses[net])]
                _, address = link_local[dest][str(dst.addresses[net])]
                targets.update({f"{address}%{iface} {p}": dest for p in PORTS})
            targets.update(
                {f"{a} {p}": dest for a in _addresses(machines[dest], "inet6") for p in PORTS}
            )
        if not targets:
            return
        out = machines[source].check_output(
            f"printf %s {shlex.quote(chr(10).join(targets))} | "
            f"python3 -c {shlex.quote(probe_script())}"
        )
        assert len(out.splitlines()) == len(targets), out
        for line in out.splitlines():
            dest = targets[line.rsplit(" ", 1)[0]]
            results.setdefault((source, dest), []).append(line)

    # Every source at once: each waits out the probe's time-out for what is dropped. A
    # mixed-up answer could only show a port open that is not (a failure), and the lines
    # are matched back to their targets by address.
    with ThreadPoolExecutor(max_workers=len(HOST_NAMES)) as pool:
        list(pool.map(probe_from, HOST_NAMES))
    return results


@pytest.mark.parametrize("source,dest", NEIGHBOURS, ids=[f"{s}->{d}" for s, d in NEIGHBOURS])
def test_nothing_answers_over_ipv6_where_ipv4_forbids_it(
    v6_probes: dict[tuple[str, str], list[str]], source: str, dest: str
) -> None:
    """The topology has no IPv6 flow: over the link-local addresses of every network the
    two share, no port answers (nor any global IPv6 address, where a VM has one)."""
    lines = v6_probes[(source, dest)]
    assert len(lines) >= len(PORTS), lines
    opened = [line for line in lines if line.endswith(("open", "refused"))]
    assert not opened, f"{source} reaches {dest} over IPv6: {opened}"
    # Dropped by the source's egress rules or the destination's (over a link-local address
    # the refusal comes back as a time-out too: "filtered" either way).
    assert {line.split()[-1] for line in lines} <= {"filtered", "denied"}


def test_a_dropped_connection_is_logged_on_the_destination_with_its_host_prefix(
    machines: Machines,
) -> None:
    mysql = TOPOLOGY.port("mysql")
    assert not TOPOLOGY.is_allowed(CLIENT.name, LB.name, "public", mysql)
    machines[CLIENT.name].run(
        f"printf %s '{LB.addresses['public']} {mysql}' | "
        f"python3 -c {shlex.quote(probe_script(0.5))}"
    )
    time.sleep(1)
    log = machines[LB.name].check_output("tail -n 50 /var/log/ulog/syslogemu.log")
    hits = [
        line
        for line in log.splitlines()
        if f"fw-drop {LB.name}:" in line
        and f"SRC={CLIENT.addresses['public']}" in line
        and f"DPT={mysql}" in line
    ]
    assert hits, f"no drop logged for {CLIENT.name} -> {LB.name}:{mysql}\n" + log[-1500:]


CLOSED_EGRESS = [name for name in HOST_NAMES if not firewall.egress_open(TOPOLOGY.hosts[name])]
DOCKER_API = 2375
"""Not a testbed port: docker's own API, which a machine must never reach on its host."""
HOST_SIDE_PORTS = sorted(
    {22, TOPOLOGY.port("site-http"), TOPOLOGY.port("site-https"), DOCKER_API}
    | {local for host in TOPOLOGY for local in host.forward.values()}
)
"""Ports a machine could use against the docker host: sshd, the site's, docker's API and
the ports the topology forwards there. The docker host is this testbed's own machine, so
the probes stay here."""


def _host_side(machine: testinfra.host.Host) -> list[str]:
    """The machine's way out to the docker host (or hypervisor): its default gateway and
    each topology network's gateway."""
    route = machine.check_output("ip -4 route show default")
    gateways = {route.split()[2]} if route.startswith("default via ") else set()
    gateways |= {str(net.gateway) for net in TOPOLOGY.networks.values()}
    return sorted(gateways)


def _probe(machine: testinfra.host.Host, targets: list[tuple[str, int]], user: str = "") -> str:
    stdin = "\n".join(f"{a} {p}" for a, p in targets)
    run_as = f"setpriv --reuid={user} --regid=nogroup --clear-groups " if user else ""
    return machine.check_output(
        f"printf %s {shlex.quote(stdin)} | {run_as}python3 -c {shlex.quote(probe_script(1.0))}"
    )


@pytest.mark.parametrize("name", CLOSED_EGRESS)
def test_a_host_cannot_open_a_connection_to_the_docker_host(machines: Machines, name: str) -> None:
    """Egress is closed: a compromised balancer (or any host) cannot reach the machine that
    runs the testbed, nor anything else the topology does not list."""
    targets = [(a, p) for a in _host_side(machines[name]) for p in HOST_SIDE_PORTS]
    results = dict(_results(_probe(machines[name], targets)))
    # A refusal is an ICMP error the host sends itself, and the kernel's ICMP rate limit
    # (global, 50 at once) can eat one in a burst: the probe then times out ("filtered").
    # Each of those is probed again alone; it must then be refused by the host's own rules.
    for target in [t for t, result in results.items() if result == "filtered"]:
        time.sleep(0.2)
        results.update(_results(_probe(machines[name], [target])))
    sent = [f"{a} {p} {r}" for (a, p), r in results.items() if r != "denied"]
    assert not sent, f"{name} may start connections outside the topology: {sent}"


def _results(out: str) -> list[tuple[tuple[str, int], str]]:
    """((address, port), result) of each line of the probe's output."""
    return [((a, int(p)), r) for a, p, r in (line.split() for line in out.splitlines())]


def test_egress_is_refused_with_a_logged_reason_and_only_apt_may_download(
    machines: Machines,
) -> None:
    lb = machines[LB.name]
    target = (_host_side(lb)[0], 80)

    def logged() -> bool:
        return any(
            f"fw-egress {LB.name}:" in line and f"DST={target[0]}" in line and "DPT=80" in line
            for line in lb.check_output("tail -n 50 /var/log/ulog/syslogemu.log").splitlines()
        )

    # The log rule takes a burst of 20, then 10 a minute: after the probes of the test
    # before, the next refused packet may be the one in six seconds that is logged. Each
    # try is refused; tried again until one is logged (at most 20 s).
    deadline = time.monotonic() + 20
    while True:
        assert _probe(lb, [target]).split()[-1] == "denied"
        time.sleep(1)
        if logged() or time.monotonic() > deadline:
            break
    assert logged(), lb.check_output("tail -n 20 /var/log/ulog/syslogemu.log")[-1500:]
    # apt's fetcher (user _apt) is the one process that may reach the package mirror, at
    # whatever address: the same connection as _apt leaves the machine.
    assert _probe(lb, [target], user=firewall.APT_USER).split()[-1] != "denied"
