"""Host hardening on every machine, beyond sshd and the firewall: what lynis measures that a
host of this kind should have (docs/security.md, "Hosts"; figures in docs/lynis.md).

Each file is small and says why; nothing here changes how a service runs (the deploy
sets its own umask, so login.defs' 027 cannot hide its files from the services' users).
Left out on purpose, with the reason in docs/security.md: a file-integrity database and
a malware scanner (a baseline nobody reviews
proves nothing, and building one costs minutes of CPU per host), automatic upgrades (a
testbed that proves behaviour must not restart its own services at random).
"""

from __future__ import annotations

from provision import layout
from provision.engine import Command, File, Packages, Service, Step

BANNER = (
    "Authorized access only. This system belongs to the webinfra-testbed; all activity\n"
    "on it is monitored and recorded. Unauthorized use is prohibited and may be reported\n"
    "to law enforcement and prosecuted. By logging in you consent to this monitoring.\n"
)
PACKAGES = layout.HARDENING_PACKAGES
"""Password strength for any local password (the accounts log in with keys; a password
set by hand later must still be strong); a checker of installed files against their
packages' checksums (`debsums -s`, for an operator who suspects tampering); a private
$TMPDIR per login (/tmp/user/<uid>, mode 0700: no guessable shared temporary files).
Not needrestart: it pulls in binutils, an assembler and linker on every server (lynis
measured the trade: one point for needrestart, three lost for the compiler)."""

CORE_DUMPS = {
    "/etc/security/limits.d/60-webinfra-testbed.conf": "* hard core 0\n",
    "/etc/systemd/coredump.conf.d/60-webinfra-testbed.conf": (
        "[Coredump]\nStorage=none\nProcessSizeMax=0\n"
    ),
}
"""No core dumps: a crashed server's memory (TLS keys, passwords, rows) never lands on disk."""

PROFILE = "/etc/profile.d/60-webinfra-testbed.sh"
PROFILE_TEXT = (
    "# An idle interactive shell closes after 15 minutes; no core dumps from a login shell.\n"
    "TMOUT=900\nreadonly TMOUT\nexport TMOUT\nulimit -c 0\n"
)

MODPROBE = "/etc/modprobe.d/60-webinfra-testbed.conf"
MODULES = ("usb-storage", "firewire-core", "firewire-ohci", "dccp", "sctp", "rds", "tipc")
"""USB and FireWire storage (data carried off a server) and network protocols nothing here
speaks (dccp, sctp, rds, tipc: kernel code reachable from the network for no use). Inside
a container the host's kernel decides; on a VM these files take effect."""

LOGIN_DEFS = {
    "PASS_MAX_DAYS": "365",
    "PASS_MIN_DAYS": "1",
    "SHA_CRYPT_MIN_ROUNDS": "65536",
    "SHA_CRYPT_MAX_ROUNDS": "65536",
    "UMASK": "027",
}
"""For passwords set later by hand: they age, and are hashed slowly. New accounts' homes
and login sessions (where pam_umask applies) keep their files from other users."""


def _login_defs() -> Command:
    check = " && ".join(f"grep -qx '{k} {v}' /etc/login.defs" for k, v in LOGIN_DEFS.items())
    edits = " ".join(f"-e '/^{k}[[:space:]]/d'" for k in LOGIN_DEFS)
    lines = "".join(f"{k} {v}\\n" for k, v in LOGIN_DEFS.items())
    return Command(
        "Ensure /etc/login.defs: passwords age and hash slowly, umask 027.",
        check=check,
        run=f"sed -i {edits} /etc/login.defs && printf '{lines}' >> /etc/login.defs",
    )


DEV_NOEXEC_UNIT = "testbed-dev-noexec.service"
DEV_NOEXEC = """# Managed by webinfra-testbed (provision/roles/common/hardening.py).
[Unit]
Description=Mount /dev noexec: device nodes live there, never programs
DefaultDependencies=no
After=systemd-remount-fs.service
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount -o remount,noexec /dev

[Install]
WantedBy=sysinit.target
"""


def steps() -> list[Step]:
    modprobe = "".join(f"install {m} /bin/false\nblacklist {m}\n" for m in MODULES)
    return [
        Packages(PACKAGES, name="Ensure pwquality, debsums and pam_tmpdir are installed."),
        # A program dropped into /dev cannot run from there (lynis FILE-6374); at every
        # boot, since the container runtime or the kernel mounts /dev without it.
        File(
            f"/etc/systemd/system/{DEV_NOEXEC_UNIT}",
            DEV_NOEXEC,
            name="Ensure /dev is remounted noexec at boot.",
        ),
        Service(DEV_NOEXEC_UNIT, name="Ensure /dev is mounted noexec."),
        File("/etc/issue", BANNER, name="Ensure the console shows the legal banner."),
        File("/etc/issue.net", BANNER, name="Ensure the network login banner is set."),
        *(
            File(
                path,
                "# Managed by webinfra-testbed: no core dumps.\n" + text,
                name=f"Ensure no core dumps ({path}).",
            )  # fmt: skip
            for path, text in CORE_DUMPS.items()
        ),
        File(PROFILE, PROFILE_TEXT, name="Ensure idle shells time out."),
        File(
            MODPROBE,
            "# Managed by webinfra-testbed: modules this host never needs.\n" + modprobe,
            name="Ensure storage and unused protocol modules cannot load.",
        ),
        _login_defs(),
    ]
