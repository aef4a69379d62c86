"""What the seed design allows, written out by hand from docs/topology.md and the design we
were given, never computed by the project's code.

The firewall and database tests take their expectations from the topology model, the same
code that writes the rules and the accounts: a bug there would make both sides wrong in the
same way and pass. On seed, the tests also compare what they observe with these tables.
Change them only when the design changes, by hand.

Seed: lb1 (public 192.168.56.10, private 192.168.57.10), web1 (192.168.57.21; nginx, app,
the MariaDB primary), web2 (192.168.57.22; nginx, app, the replica), monitor (private
192.168.57.30, public 192.168.56.30), client (192.168.56.100). TLS ends at lb1; automatic
failover is off.
"""

from __future__ import annotations

LB1_PUBLIC, LB1 = "192.168.56.10", "192.168.57.10"
WEB1, WEB2, MONITOR = "192.168.57.21", "192.168.57.22", "192.168.57.30"

SEED_OPEN = {
    # Users reach the site at the balancer's public address only: HTTPS, and 80 to redirect.
    ("client", "lb1", LB1_PUBLIC, 80),
    ("client", "lb1", LB1_PUBLIC, 443),
    # The balancer sends clear-text HTTP to both web servers (TLS ends at lb1).
    ("lb1", "web1", WEB1, 80),
    ("lb1", "web2", WEB2, 80),
    # Each app reaches both database nodes (writes to the primary, reads from the replica),
    # and replication runs between them, either way after a switchover: MariaDB 3306.
    ("web1", "web2", WEB2, 3306),
    ("web2", "web1", WEB1, 3306),
    # The writer endpoint on each app host asks each node's agent (dbcheck, 9200).
    ("web1", "web2", WEB2, 9200),
    ("web2", "web1", WEB1, 9200),
    # Every agent pushes its metrics to Prometheus on the monitor (9090)...
    ("lb1", "monitor", MONITOR, 9090),
    ("web1", "monitor", MONITOR, 9090),
    ("web2", "monitor", MONITOR, 9090),
    # Every host that shares a network with the monitor ships its logs to rsyslog there,
    # over TLS (6514); the client shares none.
    ("lb1", "monitor", MONITOR, 6514),
    ("web1", "monitor", MONITOR, 6514),
    ("web2", "monitor", MONITOR, 6514),
    # The monitor reads HAProxy's stats and metrics from the balancer (8404), and checks the
    # site there as a user would (blackbox exporter): HTTPS, and the redirect on 80.
    ("monitor", "lb1", LB1, 8404),
    ("monitor", "lb1", LB1, 443),
    ("monitor", "lb1", LB1, 80),
    # ...and as a user reaches it, from the users' network at the site's public address.
    # Nothing else crosses that network to or from the monitor: the client reaches none of
    # its ports there, and the balancer pushes its metrics and logs over the private one.
    ("monitor", "lb1", LB1_PUBLIC, 443),
    ("monitor", "lb1", LB1_PUBLIC, 80),
}
"""(source, destination, address, port) that must connect; every other probe must not."""

SEED_DB_ACCOUNTS = {
    # On each node: the app from both web servers, replication from the other node, and the
    # node's own local watchers (its agent and the exporter, through the socket).
    "web1": {("app", WEB1), ("app", WEB2), ("repl", WEB2), ("dbcheck", "localhost"),
             ("monitor", "localhost")},
    "web2": {("app", WEB1), ("app", WEB2), ("repl", WEB1), ("dbcheck", "localhost"),
             ("monitor", "localhost")},
}  # fmt: skip
"""(user, host) of every account the project manages on each database node."""
