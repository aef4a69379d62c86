"""A writer loop through the site's HTTPS API, for failover drills (tests and bench).

It posts notes with unique texts as fast as one client can, remembers every note that
got a 201, and the time of every answer, so a drill can say how long writes failed and
whether any acknowledged write was lost.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from acceptance.site import request

JSON = {"Content-Type": "application/json"}


@dataclass
class Writer:
    acked: dict[str, int] = field(default_factory=dict)
    """text -> id of every note the site acknowledged (201)."""
    answers: list[tuple[float, bool]] = field(default_factory=list)
    """(monotonic time, acknowledged?) of every attempt."""
    prefix: str = field(default_factory=lambda: f"drill-{uuid.uuid4().hex[:8]}")
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            text = f"{self.prefix}-{n}"
            ok = False
            try:
                reply = request("POST", "/api/notes", json.dumps({"text": text}), JSON)
                if reply.status == 201:
                    self.acked[text] = int(json.loads(reply.body)["id"])
                    ok = True
            except Exception:  # a failed write is data for the drill, not an error
                pass
            self.answers.append((time.monotonic(), ok))
            if not ok:
                time.sleep(0.05)

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def outage_after(self, fault: float) -> float:
        """How long writes failed after `fault`: from the last acknowledged write before
        the first failure to the first acknowledged write after it (0 if none failed)."""
        failures = [t for t, ok in self.answers if not ok and t > fault]
        if not failures:
            return 0.0
        first_failure = failures[0]
        before = [t for t, ok in self.answers if ok and t < first_failure]
        after = [t for t, ok in self.answers if ok and t > first_failure]
        if not after:
            return float("inf")
        return after[0] - (before[-1] if before else fault)

    def failures_after(self, fault: float) -> int:
        return sum(1 for t, ok in self.answers if not ok and t > fault)
