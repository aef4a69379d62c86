"""A TCP probe that runs inside a machine (sent there as a python3 -c script).

Reads "address port" lines on stdin, connects to each concurrently and prints
"address port open|refused|filtered|denied" (probe_script can add to "open" where the
connection went). refused means the packet reached the destination's TCP stack;
filtered, that it went out and nothing answered (the destination's firewall dropped it);
denied, that this machine's own firewall refused to send it (its egress rules answer "No
route to host" or "Permission denied" at once).
"""

PROBE = r"""
import errno, socket, sys, concurrent.futures as cf
DENIED = (errno.EHOSTUNREACH, errno.EACCES, errno.EPERM)
def probe(target):
    addr, port = target
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(%(timeout)s)
    try:
        # getaddrinfo reads a link-local address's scope ("fe80::1%%eth1"); a plain tuple
        # would leave it out (EINVAL).
        s.connect(socket.getaddrinfo(addr, int(port), family, socket.SOCK_STREAM)[0][4])
        if not %(detail)s:
            return "open"
        # Which of this machine's addresses it left from, and whom it reached: kept for a
        # result that must not happen (acceptance/test_firewall.py's evidence).
        try:
            return "open via=%%s:%%s peer=%%s:%%s" %% (*s.getsockname()[:2], *s.getpeername()[:2])
        except OSError as exc:
            return "open via=%%s:%%s peer=none(%%s)" %% (*s.getsockname()[:2], exc.errno)
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return "denied" if exc.errno in DENIED else "filtered"
    finally:
        s.close()
targets = [tuple(line.split()) for line in sys.stdin.read().splitlines() if line.strip()]
with cf.ThreadPoolExecutor(max_workers=min(256, len(targets) or 1)) as pool:
    for (addr, port), result in zip(targets, pool.map(probe, targets)):
        print(addr, port, result)
"""

LISTENER = r"""
import socket, selectors, sys
sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(64)
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.close()
"""


def probe_script(timeout: float = 1.5, detail: bool = False) -> str:
    """The probe; with `detail`, an "open" line goes on with where the connection left
    from and whom it reached ("open via=ADDR:PORT peer=ADDR:PORT")."""
    return PROBE % {"timeout": timeout, "detail": detail}
