"""The idempotent deploy engine, in three layers that only point down:

* :mod:`provision.engine.remote` - a machine reached over SSH (``with Remote(...) as r``);
* :mod:`provision.engine.steps` - steps that check, act and re-check; handlers; templates;
* :mod:`provision.engine.run` - roles run on their hosts tier by tier, and the report.

Roles import what they need from here.
"""

from provision.engine.remote import CommandResult, Remote, StepError, interface_of
from provision.engine.run import HostContext, Printer, Report, Role, deploy, summary
from provision.engine.steps import (
    OK,
    Command,
    File,
    FlushHandlers,
    Handler,
    Outcome,
    Packages,
    Service,
    Step,
    reload_handler,
    render,
    restart_handler,
    role_script,
    system_user,
)

__all__ = [
    "OK",
    "Command",
    "CommandResult",
    "File",
    "FlushHandlers",
    "Handler",
    "HostContext",
    "Outcome",
    "Packages",
    "Printer",
    "Remote",
    "Report",
    "Role",
    "Service",
    "Step",
    "StepError",
    "deploy",
    "interface_of",
    "reload_handler",
    "render",
    "restart_handler",
    "role_script",
    "summary",
    "system_user",
]
