#!/usr/bin/python3
"""Records every notification Alertmanager sends (webhook), so tests and users can see
which alerts fired and resolved, and when. Managed by webinfra-testbed
(provision/roles/monitor/files/alert-receiver.py).

POST /alerts   Alertmanager's webhook payload; each alert is appended, with the time it
               arrived, to the log file (JSON lines).
GET  /alerts   every recorded alert, as a JSON list.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[3] if len(sys.argv) > 3 else "/var/lib/alert-receiver/alerts.jsonl"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with open(LOG, "a") as out:
            for alert in body.get("alerts", []):
                out.write(json.dumps({"received": time.time(), **alert}) + "\n")
        self.send_response(200)
        self.end_headers()

    def do_GET(self):  # noqa: N802
        try:
            with open(LOG) as f:
                alerts = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            alerts = []
        body = json.dumps(alerts).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
