"""Measure how long the testbed takes to come up, cold and warm; write docs/bringup.md.

    .venv/bin/python -m bench.bringup --runs 2 [--skip-cold]

Phases, each timed with time.monotonic() around the real command:
  cold   no box image and no machine: box build (debootstrap + import + Dockerfile),
         `vagrant up`, first `fab deploy` (packages installed from the mirror);
  warm   box image cached, machines destroyed: `vagrant up`, first `fab deploy`;
  again  machines up and deployed: `fab deploy` three more times (no changes), each timed.
The testbed is left up and deployed at the end. Runs are sequential on this machine.
What follows REST_MARKER in docs/bringup.md (figures read from CI runs, written by hand)
is kept.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from provision import PROJECT_ROOT, box
from provision.roles import ALL_ROLES

VENV_BIN = Path(sys.executable).parent
DOC = PROJECT_ROOT / "docs" / "bringup.md"
REST_MARKER = "<!-- bench.bringup keeps what follows: figures written by hand -->"
AGAIN = 3
"""No-op deploys timed after each warm bring-up."""


def _run(cmd: list[str]) -> float:
    started = time.monotonic()
    res = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    if res.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return took


def destroy() -> None:
    _run([str(VENV_BIN / "fab"), "destroy"])


def remove_box() -> None:
    for tag in (box.image_tag(), box.rootfs_tag()):
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


def bring_up(with_box: bool) -> dict[str, float]:
    phases: dict[str, float] = {}
    if with_box:
        phases["box"] = _run([sys.executable, "-m", "provision.box"])
    phases["vagrant up"] = _run(["vagrant", "up", "--provider=docker"])
    phases["fab deploy"] = _run([str(VENV_BIN / "fab"), "deploy"])
    phases["total"] = sum(phases.values())
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=1, help="cold and warm bring-ups each (default 1)"
    )
    parser.add_argument(
        "--skip-cold",
        action="store_true",
        help="keep the box image: warm bring-ups and no-op deploys only (a few minutes)",
    )
    args = parser.parse_args()
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    again: list[float] = []
    for i in range(args.runs):
        if not args.skip_cold:
            print(f"bench: run {i + 1}/{args.runs}: cold...", flush=True)
            destroy()
            remove_box()
            cold.append(bring_up(with_box=True))
            print(f"bench: cold {cold[-1]}", flush=True)
        print(f"bench: run {i + 1}/{args.runs}: warm...", flush=True)
        destroy()
        warm.append(bring_up(with_box=True))
        print(f"bench: warm {warm[-1]}", flush=True)
        for _ in range(AGAIN):
            again.append(_run([str(VENV_BIN / "fab"), "deploy"]))
        print(f"bench: no-op deploys {[round(a, 1) for a in again[-AGAIN:]]}", flush=True)
    write_doc(cold, warm, again, args.runs)
    print(f"bench: wrote {DOC.relative_to(PROJECT_ROOT)}")
    return 0


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.0f} s"
    return f"{statistics.median(values):.0f} s (min {min(values):.0f}, max {max(values):.0f})"


def write_doc(
    cold: list[dict[str, float]], warm: list[dict[str, float]], again: list[float], runs: int
) -> None:
    phases = ["box", "vagrant up", "fab deploy", "total"]
    rows = []
    for phase in phases:
        c = [r[phase] for r in cold if phase in r]
        w = [r[phase] for r in warm if phase in r]
        rows.append(f"| {phase} | {_fmt(c) if c else 'not measured'} | {_fmt(w) if w else '-'} |")
    rest = DOC.read_text().partition(REST_MARKER)[2] if DOC.exists() else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    DOC.write_text(
        f"""# Bring-up time (measured)

Measured by `python -m bench.bringup --runs {runs}` on {time.strftime("%Y-%m-%d")}, on this
project's machine: {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()},
docker provider, topology `seed` (5 machines), deploying the roles
{", ".join(r.name for r in ALL_ROLES)}. {runs} run(s) of each; where more than one,
the median with min and max. Times are wall clock around the real commands; the machine is
shared and noisy, so read them as a scale, not a promise.

| phase | cold (no box image) | warm (box cached) |
|---|---|---|
{chr(10).join(rows)}

- **cold**: box built from scratch (debootstrap of Debian 12 from the mirror in apt's sources,
  `docker import`, the Dockerfile), then `vagrant up` and the first `fab deploy` (which
  installs the base packages in each machine).
- **warm**: the box image is cached (its tag is a hash of the recipe, so the box step only
  checks it), machines destroyed and created again, first `fab deploy`.
- **no-op `fab deploy`** on the running testbed (no changes), {len(again)} timed:
  {_fmt(again)}.

## Compared with VirtualBox VMs

This machine has no hypervisor, so `vagrant up --provider=virtualbox` of
`debian/bookworm64` could not be measured here, and no figure is claimed for it. What
differs, from Vagrant's documentation: the first `vagrant up` downloads the box from
Vagrant Cloud (the docker box here is built locally and needs no download), every machine
is a full VM that imports a disk and boots a kernel before SSH answers, and VirtualBox
machines come up one after another, since `--parallel` applies only to providers that
support it and VirtualBox does not (the docker provider does). The deploy phase is the
same code on both. To measure it on a laptop: `time vagrant up --provider=virtualbox`
then `time fab deploy`.

{REST_MARKER}{rest}"""
    )


if __name__ == "__main__":
    raise SystemExit(main())
