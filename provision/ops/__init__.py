"""Operator commands: what each Fabric task does (fabfile.py only declares the tasks).

One module per concern: deploy, status, machines, firewall_view, tls, db, logs, scale, load.
Errors that stop a command before it runs are :class:`provision.ops.common.TaskError` (exit code 2).
"""
