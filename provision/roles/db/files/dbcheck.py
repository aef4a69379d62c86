#!/usr/bin/python3
"""Answers whether this MariaDB node takes writes: 200 "writable", 503 "read-only" or "down".

Managed by webinfra-testbed (provision/roles/db/files/dbcheck.py). The app hosts'
writer endpoint (HAProxy) checks it every second, so writes go to the one node that
accepts them. Runs as the `dbcheck` user, which MariaDB knows through unix_socket and
which holds no privilege: reading @@read_only needs none.
"""

import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def state() -> tuple[int, str]:
    try:
        out = subprocess.run(
            ["mariadb", "-N", "-B", "--connect-timeout=1", "-e", "SELECT @@read_only"],
            # A server still recovering after a crash may hold a connection: that is
            # "down" too, and must be said faster than the writer endpoint's check gives up.
            capture_output=True,
            text=True,
            timeout=0.5,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return 503, "down\n"
    return (200, "writable\n") if out == "0" else (503, "read-only\n")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        code, body = state()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
