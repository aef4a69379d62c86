"""Roles, one folder each, with their templates beside them.

A role is a small table of contents: a function from a host's context to the
list of steps that host needs, and the handlers those steps may notify.
"""

from __future__ import annotations

from provision.engine import Role
from provision.roles import agent, app, common, db, dbwatch, firewall, lb, logs, monitor, web

ALL_ROLES: tuple[Role, ...] = (
    common.ROLE,
    firewall.ROLE,
    db.ROLE,
    db.REPLICATION,
    app.ROLE,
    web.ROLE,
    lb.ROLE,
    dbwatch.ROLE,
    monitor.ROLE,
    agent.ROLE,
    logs.ROLE,
)
"""Every role the deploy runs, each tagged with the tier it belongs to."""
