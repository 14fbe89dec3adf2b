"""A real libvirt daemon running real QEMU domains, for tests that must face the real peer.

Why a real daemon: the agent's hard cases (a daemon that is killed, restarted, or hangs; a domain
that vanishes between list and XMLDesc) only exist against libvirtd itself; the in-process
``test:///`` driver cannot reproduce them.

Layout of one session-mode daemon (``LibvirtDaemon``), everything inside ``state_dir``::

    state_dir/                 owned by nobody, traversable (so never under /root)
      config/libvirt/qemu.conf       stdio_handler = "file" (no virtlogd)
      config/libvirt/qemu/<name>.xml persistent domain definitions
      run/libvirt/libvirt-sock       the socket: URI qemu:///session?socket=<that path>
      run/libvirt/qemu/run/<name>.pid  QEMU pids of running domains
      cache/ home/ libvirtd.log

Process tree (why each piece is there)::

    tini -s            subreaper: QEMU daemonizes, its orphans land here and are reaped at once.
                       PID 1 on these machines reaps only every 1.5-2 s and libvirt's destroy()
                       waits for the reap. tini outlives daemon restarts, so re-adopted QEMUs keep
                       being reaped fast.
      bash supervisor  starts libvirtd on request ("start" on stdin, answers its pid). When its
                       stdin reaches EOF without "quit" (the test process died), it SIGKILLs
                       libvirtd and every QEMU of this state dir: a crashed test run leaves nothing.
        libvirtd       session mode (its uid is not 0), all paths from XDG_* variables.
      qemu-system-x86_64 ...   (one per running domain, reparented to tini)

As root everything runs as ``nobody``; as another user it runs as that user (session mode works the
same). ``SystemLibvirtDaemon`` runs the system-mode daemon as root in a private mount namespace, only
to get a real ``type='kvm'`` domain.

Every RPC the harness makes goes through a read-WRITE connection and is bounded by a deadline, so a
paused or wedged daemon makes a test fail with a message instead of hanging the session. The agent
under test opens its own read-only connections.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Self, TypedDict, TypeVar

import libvirt

T = TypeVar("T")

LIBVIRTD: Final = "/usr/sbin/libvirtd"
TINI: Final = "/usr/bin/tini"
BASH: Final = "/bin/bash"
UNSHARE: Final = "/usr/bin/unshare"
QEMU_SYSTEM_X86_64: Final = "/usr/bin/qemu-system-x86_64"
SS: Final = "/usr/bin/ss"
NOBODY_UID: Final = 65534
NOGROUP_GID: Final = 65534
# Linux sun_path is 108 bytes including the terminating NUL.
SUN_PATH_MAX: Final = 107

# libvirt error codes the harness reacts to (see libvirt's virErrorNumber).
_ERR_SYSTEM_ERROR: Final = 38  # broken pipe / no socket: daemon gone
_ERR_INTERNAL_ERROR: Final = 1  # "client socket is closed" on a connection whose daemon died
_ERR_NO_DOMAIN: Final = 42
_ERR_OPERATION_INVALID: Final = 55  # e.g. destroy of an inactive domain

# KVM ioctls (linux/kvm.h): _IO(KVMIO=0xAE, 0x00) and _IO(0xAE, 0x01).
_KVM_GET_API_VERSION: Final = 0xAE00
_KVM_CREATE_VM: Final = 0xAE01
_KVM_API_VERSION: Final = 12

DEFAULT_RPC_TIMEOUT: Final = 30.0
DEFAULT_START_TIMEOUT: Final = 20.0
SYSTEM_START_TIMEOUT: Final = 90.0  # first system-mode start probes QEMU capabilities (~8 s)


class DomainRecord(TypedDict):
    """What the harness knows about one domain, as plain data tests can print and compare."""

    name: str
    uuid: str
    id: int  # libvirt domain id, -1 when inactive
    active: bool
    state: int  # libvirt.VIR_DOMAIN_RUNNING, VIR_DOMAIN_PAUSED, VIR_DOMAIN_SHUTOFF, ...
    virt_type: str  # root attribute 'type' of the (live when active) domain XML
    qemu_pid: int | None


def missing_binaries(extra: Iterable[str] = ()) -> list[str]:
    """Return the programs the session daemon needs that are not installed (empty when all are)."""
    needed = [LIBVIRTD, TINI, BASH, QEMU_SYSTEM_X86_64, SS, *extra]
    return [p for p in needed if not os.access(p, os.X_OK)]


def domain_xml(name: str, virt_type: str = "qemu", memory_mib: int = 32, metadata: str = "") -> str:
    """Return the XML of a tiny disk-less domain.

    It boots SeaBIOS to "no bootable device" and stays running: about 0.3 s to start, ~17 MiB, no
    image to download. ``metadata`` (raw XML) goes inside ``<metadata>`` for tests that need
    KubeVirt-like annotations.
    """
    meta = f"<metadata>{metadata}</metadata>" if metadata else ""
    return (
        f"<domain type='{virt_type}'>"
        f"<name>{_xml_escape(name)}</name>{meta}"
        f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
        f"<devices><emulator>{QEMU_SYSTEM_X86_64}</emulator>"
        "<controller type='usb' model='none'/><memballoon model='none'/><serial type='null'/>"
        "</devices></domain>"
    )


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


def call_with_deadline(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` in a worker thread and give up after ``timeout`` seconds.

    Why: a libvirt call against a stopped (SIGSTOP) daemon blocks forever and cannot be interrupted.
    The worker thread is a daemon thread; if it stays stuck it ends when the daemon is finally
    killed (the call then fails with a broken pipe). The caller gets a ``TimeoutError`` naming the
    operation instead of a hung test session.
    """
    result: list[T] = []
    error: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the caller below
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"libvirt-call:{what}", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"libvirt call {what!r} did not return within {timeout:.1f}s")
    if error:
        raise error[0]
    return result[0]


# --------------------------------------------------------------------------------------------------
# /proc helpers: how the harness proves it leaves nothing running.


def proc_state(pid: int) -> str | None:
    """Return the one-letter state of ``pid`` (R, S, T, Z, ...) or None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: the state follows the last ')'.
    return data[data.rindex(")") + 2]


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie holds no socket and runs no code)."""
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X")


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (zombie or reaped); return False on timeout.

    Uses a pidfd, which becomes readable when the process exits, so there is no polling loop.
    """
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # kernel without pidfd: poll /proc
        while pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while pid_alive(pid):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller.poll(max(1, int(remaining * 1000)))
        return True
    finally:
        os.close(fd)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def processes_referencing(path: str | Path, *, environ: bool = True) -> list[int]:
    """Return live pids whose command line (or environment) mentions ``path``.

    Why: every process the harness starts names its private temp folder somewhere - QEMU in its
    command line (monitor socket, master key), libvirtd in its XDG_* environment, Prometheus and
    rotel in their arguments - so scanning for that folder finds exactly our processes and never
    another engineer's. Reading other users' environ needs root; as non-root only the command line
    of foreign processes is checked.
    """
    needle = os.fsencode(str(path))
    me = os.getpid()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == me:
            continue
        blob = _read_bytes(f"/proc/{pid}/cmdline")
        if environ and needle not in blob:
            blob += _read_bytes(f"/proc/{pid}/environ")
        if needle in blob and pid_alive(pid):
            found.append(pid)
    return found


def kill_and_wait(pids: Iterable[int], timeout: float = 10.0) -> list[int]:
    """SIGKILL ``pids`` (SIGCONT first, in case they are stopped) and return those still alive after."""
    pids = list(pids)
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
    return [pid for pid in pids if not wait_pid_gone(pid, timeout)]


def wait_reaped(pids: Iterable[int], timeout: float) -> bool:
    """Wait until none of ``pids`` is even a zombie any more; return False on timeout."""
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while True:
        pending = {p for p in pending if proc_state(p) is not None}
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def unix_socket_accepts(path: str | Path) -> bool:
    """Tell whether a listener sits behind the Unix socket ``path`` (quietly, unlike libvirt.open)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def kvm_usable() -> tuple[bool, str]:
    """Probe /dev/kvm the way QEMU does: open it, check the API version, create (and drop) a VM.

    Why not just test that the file exists: in containers /dev/kvm can exist yet be unopenable
    (permissions, device cgroup) or refuse KVM_CREATE_VM (nested virtualization off). Returns
    ``(usable, reason)``; the reason is meant to be printed in skip messages.
    """
    dev = "/dev/kvm"
    try:
        st = os.stat(dev)
    except FileNotFoundError:
        return False, f"{dev} does not exist (no hardware virtualization exposed to this machine)"
    if not stat.S_ISCHR(st.st_mode):
        return False, f"{dev} is not a character device"
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"cannot open {dev} read-write as uid {os.geteuid()}: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION, 0)
        if version != _KVM_API_VERSION:
            return False, f"{dev}: KVM_GET_API_VERSION returned {version}, expected {_KVM_API_VERSION}"
        try:
            vm_fd = fcntl.ioctl(fd, _KVM_CREATE_VM, 0)
        except OSError as exc:
            return False, f"{dev}: KVM_CREATE_VM failed: {exc.strerror}"
        os.close(vm_fd)
    except OSError as exc:
        return False, f"{dev}: ioctl failed: {exc.strerror}"
    finally:
        os.close(fd)
    return True, f"{dev} opened, API version {_KVM_API_VERSION}, KVM_CREATE_VM succeeded"


# --------------------------------------------------------------------------------------------------
# The supervisor script. It runs under tini and starts libvirtd on request. Arguments: $1 = state
# dir, $2 = directory of QEMU pid files, $3 = log file, $4.. = the libvirtd command. Optional setup
# commands (bind mounts for system mode) come in through SUPERVISOR_SETUP.

_SUPERVISOR = r"""
set -u
state="$1"; piddir="$2"; log="$3"; shift 3
if [ -n "${SUPERVISOR_SETUP:-}" ]; then
  eval "$SUPERVISOR_SETUP" || { echo "setup-failed"; exit 3; }
  unset SUPERVISOR_SETUP
fi
echo "ready"
daemon=""
while IFS= read -r cmd; do
  case "$cmd" in
    start) "$@" </dev/null >>"$log" 2>&1 & daemon=$!; echo "$daemon" ;;
    quit) exit 0 ;;
  esac
done
# stdin closed without "quit": the test process died. Leave nothing running.
if [ -n "$daemon" ]; then kill -CONT "$daemon" 2>/dev/null; kill -KILL "$daemon" 2>/dev/null; fi
for f in "$piddir"/*.pid; do
  [ -f "$f" ] && [ "${f##*/}" != driver.pid ] || continue
  qpid=""; read -r qpid <"$f"  # libvirt writes no trailing newline: read fails but sets qpid
  [ -n "$qpid" ] && kill -KILL "$qpid" 2>/dev/null
done
rm -rf "$state" 2>/dev/null
exit 0
"""


class LibvirtDaemon:
    """A session-mode libvirtd (runs as ``nobody`` when the harness is root) in its own folder.

    Typical use::

        d = LibvirtDaemon.launch()            # or LibvirtDaemon(state_dir).start_daemon()
        rec = d.define("default_vm-a")         # defined and running, type='qemu' (TCG)
        conn = libvirt.openReadOnly(d.uri)     # what the agent does
        d.kill(); d.restart()                  # crash + recovery: the domain is re-adopted
        d.cleanup()                            # always: nothing left running, folder removed

    Naming: ``start``/``destroy``/``undefine`` act on domains (libvirt's words); the daemon itself
    is driven by ``start_daemon``/``stop``/``kill``/``restart``/``pause_daemon``/``resume_daemon``.
    """

    mode: Literal["session", "system"] = "session"

    def __init__(
        self, state_dir: str | Path | None = None, *, rpc_timeout: float = DEFAULT_RPC_TIMEOUT
    ) -> None:
        """Prepare (but do not start) a daemon in ``state_dir`` (a fresh folder under /tmp when None).

        An existing ``state_dir`` is used as is (domains defined there are loaded). ``cleanup()``
        removes the folder in every case.
        """
        if state_dir is None:
            state_dir = tempfile.mkdtemp(prefix="ovh-libvirtd-", dir="/tmp")
        self.state_dir: Path = Path(state_dir).resolve()
        self.rpc_timeout = rpc_timeout
        self._run_as_nobody = os.geteuid() == 0
        self._supervisor: subprocess.Popen[bytes] | None = None
        self._daemon_pid: int | None = None
        self._paused = False
        self._conn: Any = None  # libvirt.virConnect (untyped module)
        self._conn_lock = threading.RLock()
        self._parked: list[Any] = []  # connections dropped while paused (see _drop_connection)
        self._cleaned = False
        self.generation = 0  # how many times libvirtd was started in this folder
        self.last_start_seconds: float | None = None

    # ----------------------------------------------------------------- paths and URIs
    @property
    def runtime_dir(self) -> Path:
        """XDG_RUNTIME_DIR of the daemon: libvirt puts its socket and QEMU state under it."""
        return self.state_dir / "run"

    @property
    def config_dir(self) -> Path:
        """XDG_CONFIG_HOME: qemu.conf and the persistent domain XML (``libvirt/qemu/<name>.xml``)."""
        return self.state_dir / "config"

    @property
    def socket_path(self) -> Path:
        """The daemon's read-write socket (read-only clients use it too, see ``ro_uri``)."""
        return self.runtime_dir / "libvirt" / "libvirt-sock"

    @property
    def qemu_pid_dir(self) -> Path:
        """Where libvirt writes ``<domain name>.pid`` for each running QEMU."""
        return self.runtime_dir / "libvirt" / "qemu" / "run"

    @property
    def domain_config_dir(self) -> Path:
        """Where the persistent XML of defined domains lives (``<name>.xml``)."""
        return self.config_dir / "libvirt" / "qemu"

    @property
    def log_path(self) -> Path:
        """libvirtd's stdout/stderr, appended across restarts: read it when a test fails."""
        return self.state_dir / "libvirtd.log"

    @property
    def uri(self) -> str:
        """Full URI for this daemon. Always use it: a bare ``qemu:///session`` as root finds nothing."""
        return f"qemu:///{self.mode}?socket={self.socket_path}"

    @property
    def ro_uri(self) -> str:
        """URI for ``libvirt.openReadOnly``: in session mode the same socket, read-only per connection."""
        return self.uri

    @property
    def unix_uri(self) -> str:
        """The same daemon spelled the way the agent spells KubeVirt launcher URIs."""
        return f"qemu+unix:///{self.mode}?socket={self.socket_path}"

    @property
    def pid(self) -> int | None:
        """pid of the libvirtd process (not tini's), None when not running."""
        if self._daemon_pid is not None and pid_alive(self._daemon_pid):
            return self._daemon_pid
        return None

    @property
    def supervisor_pid(self) -> int | None:
        """pid of tini, the subreaper that holds the whole tree (None when gone)."""
        return self._supervisor.pid if self._supervisor is not None else None

    @property
    def paused(self) -> bool:
        """True between ``pause_daemon()`` and ``resume_daemon()``."""
        return self._paused

    # ----------------------------------------------------------------- daemon lifecycle
    @classmethod
    def launch(cls, state_dir: str | Path | None = None, **kwargs: Any) -> Self:
        """Construct and start a daemon; on any start-up failure the folder is cleaned up."""
        daemon = cls(state_dir, **kwargs)
        try:
            daemon.start_daemon()
        except BaseException:
            daemon.cleanup()
            raise
        return daemon

    def __enter__(self) -> Self:
        """Start the daemon if needed; the ``with`` block guarantees ``cleanup()``."""
        if self.pid is None:
            self.start_daemon()
        return self

    def __exit__(self, *exc: object) -> None:
        """Clean up whatever happened inside the block."""
        self.cleanup()

    def start_daemon(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Start libvirtd on ``state_dir`` and return once an RPC answers.

        Readiness is an RPC (``getLibVersion`` on a fresh connection), not the socket file: the
        socket appears before the daemon serves requests.
        """
        if self._cleaned:
            raise RuntimeError("this LibvirtDaemon was cleaned up; create a new one")
        if self.pid is not None:
            raise RuntimeError(f"libvirtd already running (pid {self.pid})")
        t0 = time.monotonic()
        if self._supervisor is None or self._supervisor.poll() is not None:
            self._prepare_dir()
            self._start_supervisor()
        self._daemon_pid = self._supervisor_command("start")
        self.generation += 1
        if self.generation == 1:
            atexit.register(self.cleanup)  # last resort if nobody calls cleanup()
        try:
            self._wait_ready(t0 + timeout)
        except BaseException:
            self._dump_log_tail()
            raise
        self.last_start_seconds = time.monotonic() - t0

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM libvirtd and wait for it to exit (QEMU domains keep running, as in production)."""
        self._signal_daemon_and_wait(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL libvirtd, simulating a crash: the socket file stays behind, QEMUs keep running."""
        self._signal_daemon_and_wait(signal.SIGKILL, timeout)

    def restart(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Start libvirtd again on the same folder (after ``stop``/``kill``; stops it first if running).

        The new daemon binds a new socket file at the same path, so every old connection is dead
        and clients must reconnect. Domains that were running are re-adopted (same ids); this
        returns only once the daemon has re-attached to each of their QEMUs (see
        ``_wait_reconnected``), so tests need not poll and may destroy them at once.
        """
        if self.pid is not None:
            self.stop()
        running = self._pidfile_domains()
        self.start_daemon(timeout)
        deadline = time.monotonic() + timeout
        for name in sorted(running):
            self._wait_reconnected(name, deadline)

    def _wait_reconnected(self, name: str, deadline: float) -> None:
        """Wait until the new daemon has finished re-attaching to the QEMU of ``name``.

        The domain is listed active as soon as its status XML is loaded, but a worker thread is
        still reconnecting to the QEMU monitor. Measured: a ``destroy()`` in that window kills QEMU,
        makes the reconnect fail, and reports "domain is not running". ``ioThreadInfo``
        (virDomainGetIOThreadInfo) needs a domain job and the monitor, so its success means the
        reconnect job is over.
        """
        last: Exception | None = None
        while True:
            try:
                self._rpc(lambda c: c.lookupByName(name).ioThreadInfo(0), f"reconnected({name})")
                return
            except libvirt.libvirtError as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"restarted libvirtd did not re-adopt {name}: {last}; see {self.log_path}")
            time.sleep(0.01)

    def pause_daemon(self) -> None:
        """SIGSTOP libvirtd: its socket still accepts (kernel backlog) but no call ever returns.

        Returns once the kernel reports the process stopped. Harness RPCs refuse to run while
        paused (they would hang); call ``resume_daemon()`` (``cleanup()`` does it too).
        """
        pid = self._require_pid()
        os.kill(pid, signal.SIGSTOP)
        self._paused = True
        self._wait_state(pid, lambda s: s in ("T", "t"), "stopped")

    def unread_request_bytes(self) -> int:
        """Bytes clients sent on connections libvirtd accepted but has not read yet.

        While the daemon is paused, a non-zero value proves a client call is stuck waiting for it
        (what a test needs before acting "during a hung call"). Read with ``ss`` (iproute2): the
        receive queues of libvirtd's connected sockets. Connections still in the listen backlog
        belong to no process and are not counted.
        """
        pid = self._require_pid()
        out = subprocess.run([SS, "-xpH", "state", "established"], capture_output=True, text=True, check=True)
        total = 0
        for line in out.stdout.splitlines():
            if f"pid={pid}," in line:
                total += int(line.split()[1])  # Netid Recv-Q Send-Q ... (no State column when filtered)
        return total

    def client_connections(self, client_pid: int | None = None) -> int:
        """Connections libvirtd has accepted and not closed, from ``ss``: all of them (the harness's
        own included), or those whose other end is a socket of process ``client_pid``."""
        pid = self._require_pid()
        out = subprocess.run([SS, "-xpH", "state", "established"], capture_output=True, text=True, check=True)
        mine = {line for line in out.stdout.splitlines() if f"pid={pid}," in line}
        if client_pid is None:
            return len(mine)
        theirs = set()
        for fd in Path(f"/proc/{client_pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed since the listing
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    theirs.add(link[len("socket:[") : -1])
        # Local address and inode, then peer address and inode: "<path> <inode> * <peer inode>".
        return sum(1 for line in mine if line.split()[6] in theirs)

    def resume_daemon(self) -> None:
        """SIGCONT libvirtd; calls that were blocked then complete."""
        pid = self._require_pid()
        os.kill(pid, signal.SIGCONT)
        self._wait_state(pid, lambda s: s not in ("T", "t"), "running")
        self._paused = False
        self._release_parked()

    def cleanup(self) -> None:
        """Leave nothing running and remove the folder. Idempotent; safe after any failure.

        Order: resume and SIGTERM libvirtd (SIGKILL if it lingers), SIGKILL every QEMU of this
        folder (pid files, then a /proc scan for any process naming the folder), end the
        supervisor, remove the folder.
        """
        if self._cleaned:
            return
        self._cleaned = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.cleanup)
        self._drop_connection()
        pid = self._daemon_pid
        if pid is not None and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
            if not wait_pid_gone(pid, 5.0):
                kill_and_wait([pid])
        self._paused = False
        self._release_parked()
        victims = set(self.qemu_pids()) | self._own_processes()
        survivors = kill_and_wait(victims)
        # Let tini reap them while it still exists; a zombie handed to PID 1 lingers for seconds.
        wait_reaped(victims, 2.0)
        self._stop_supervisor()
        # A last sweep catches anything started between the scans (there should be nothing).
        survivors += kill_and_wait(self._own_processes())
        self._remove_dir()
        if survivors:
            raise RuntimeError(f"processes of {self.state_dir} survived SIGKILL: {survivors}")

    # ----------------------------------------------------------------- domains
    def define(
        self,
        name: str,
        start: bool = True,
        paused: bool = False,
        virt_type: str = "qemu",
        *,
        xml: str | None = None,
        memory_mib: int = 32,
        metadata: str = "",
    ) -> DomainRecord:
        """Define a persistent domain (the tiny one of ``domain_xml`` unless ``xml`` is given).

        With ``start`` it is started too, paused when ``paused`` (0 % CPU, same live XML). As
        ``nobody``, ``virt_type='kvm'`` is refused by libvirt (code 67): use SystemLibvirtDaemon.
        """
        text = xml if xml is not None else domain_xml(name, virt_type, memory_mib, metadata)
        self._rpc(lambda c: c.defineXML(text), f"defineXML({name})")
        if start:
            return self.start(name, paused=paused)
        return self.domain(name)

    def start(self, name: str, paused: bool = False) -> DomainRecord:
        """Start the defined domain ``name`` (``paused``: VIR_DOMAIN_START_PAUSED); returns once QEMU runs."""
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        self._rpc(lambda c: c.lookupByName(name).createWithFlags(flags), f"start({name})")
        return self.domain(name)

    def destroy(self, name: str) -> None:
        """Hard-stop the domain's QEMU (libvirt ``destroy``); it stays defined. No-op if inactive."""

        def op(conn: Any) -> None:
            dom = conn.lookupByName(name)
            if dom.isActive():
                _destroy(dom)

        self._rpc(op, f"destroy({name})")

    def undefine(self, name: str, destroy: bool = True) -> None:
        """Remove the domain's definition, destroying it first when ``destroy`` (default).

        With ``destroy=False`` a running domain keeps running as a transient one. No-op if absent.
        """

        def op(conn: Any) -> None:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == _ERR_NO_DOMAIN:
                    return
                raise
            if destroy and dom.isActive():
                _destroy(dom)
            if dom.isPersistent():
                dom.undefineFlags(0)

        self._rpc(op, f"undefine({name})")

    def domain(self, name: str) -> DomainRecord:
        """Return the current facts about domain ``name`` (raises libvirtError code 42 if unknown)."""
        return self._rpc(lambda c: self._record(c.lookupByName(name)), f"domain({name})")

    def domains(self) -> list[DomainRecord]:
        """Return facts about every domain (active and defined-inactive), sorted by name."""
        recs = self._rpc(lambda c: [self._record(d) for d in c.listAllDomains(0)], "listAllDomains")
        return sorted(recs, key=lambda r: r["name"])

    def qemu_pid(self, name: str) -> int | None:
        """pid of the running QEMU of domain ``name`` from libvirt's pid file, None if not running."""
        try:
            pid = int((self.qemu_pid_dir / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def qemu_pids(self) -> list[int]:
        """pids of every live QEMU of this daemon according to the pid files."""
        if not self.qemu_pid_dir.is_dir():
            return []
        pids = (self.qemu_pid(name) for name in self._pidfile_names())
        return [p for p in pids if p is not None]

    def _pidfile_names(self) -> list[str]:
        # driver.pid is the QEMU driver's own lock file (it holds libvirtd's pid), not a domain.
        return [p.stem for p in self.qemu_pid_dir.glob("*.pid") if p.name != "driver.pid"]

    def connection(self) -> Any:
        """The harness's read-write ``libvirt.virConnect`` (reopened after a restart).

        Tests may use it for admin calls the harness does not wrap; it is not bounded by a deadline.
        """
        with self._conn_lock:
            self._require_not_paused()
            if self._conn is None:
                uri = self.uri
                self._conn = call_with_deadline(lambda: libvirt.open(uri), self.rpc_timeout, "open")
            return self._conn

    # ----------------------------------------------------------------- internals
    def _record(self, dom: Any) -> DomainRecord:
        active = bool(dom.isActive())
        root = ET.fromstring(dom.XMLDesc(0))  # our own daemon's XML
        name = str(dom.name())
        return DomainRecord(
            name=name,
            uuid=str(dom.UUIDString()),
            id=int(dom.ID()),
            active=active,
            state=int(dom.state()[0]),
            virt_type=root.get("type", ""),
            qemu_pid=self.qemu_pid(name) if active else None,
        )

    def _rpc(self, fn: Callable[[Any], T], what: str) -> T:
        """Run ``fn(connection)`` with a deadline, reconnecting once if the daemon was restarted."""
        for attempt in (1, 2):
            conn = self.connection()
            try:
                return call_with_deadline(functools.partial(fn, conn), self.rpc_timeout, what)
            except libvirt.libvirtError as exc:
                dead = exc.get_error_code() in (_ERR_SYSTEM_ERROR, _ERR_INTERNAL_ERROR) and not conn.isAlive()
                if attempt == 1 and dead:
                    self._drop_connection()
                    continue
                raise
        raise AssertionError("unreachable")

    def _drop_connection(self) -> None:
        """Forget the admin connection without ever blocking.

        Careful: dropping the last reference to a ``virConnect`` runs its ``__del__``, which calls
        ``virConnectClose`` - an RPC that blocks forever on a SIGSTOP'd daemon. While paused the
        object is parked in ``_parked`` and released only once the daemon runs or is dead.
        """
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._paused:
            self._parked.append(conn)
            return
        with contextlib.suppress(Exception):
            call_with_deadline(conn.close, 2.0, "close")

    def _release_parked(self) -> None:
        """Let parked connections go once their close can no longer hang (daemon running or gone)."""
        parked, self._parked = self._parked, []
        for conn in parked:
            with contextlib.suppress(Exception):
                call_with_deadline(conn.close, 2.0, "close")

    def _require_pid(self) -> int:
        pid = self.pid
        if pid is None:
            raise RuntimeError("libvirtd is not running")
        return pid

    def _require_not_paused(self) -> None:
        if self._paused:
            raise RuntimeError("libvirtd is paused (SIGSTOP): an RPC would hang; call resume_daemon() first")

    @staticmethod
    def _wait_state(pid: int, ok: Callable[[str], bool], what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = proc_state(pid)
            if state is None:
                raise RuntimeError(f"process {pid} vanished while waiting for it to be {what}")
            if ok(state):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"process {pid} not {what} after {timeout}s (state {state})")
            time.sleep(0.001)

    def _signal_daemon_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        pid = self._require_pid()
        self._drop_connection()
        if self._paused:
            os.kill(pid, signal.SIGCONT)
            self._paused = False
        os.kill(pid, sig)
        if not wait_pid_gone(pid, timeout):
            raise TimeoutError(f"libvirtd {pid} still alive {timeout}s after {sig.name}")
        self._daemon_pid = None
        self._release_parked()

    def _own_processes(self) -> set[int]:
        """Every live process of this daemon's tree other than tini and its supervisor shell."""
        keep = self._supervisor_tree()
        return {p for p in processes_referencing(self.state_dir) if p not in keep}

    def _supervisor_tree(self) -> set[int]:
        tini = self.supervisor_pid
        if tini is None or not pid_alive(tini):
            return set()
        children = _read_bytes(f"/proc/{tini}/task/{tini}/children").split()
        shells = {int(c) for c in children if _read_bytes(f"/proc/{int(c)}/comm").strip() == b"bash"}
        return {tini, *shells}

    def _pidfile_domains(self) -> set[str]:
        if not self.qemu_pid_dir.is_dir():
            return set()
        return {name for name in self._pidfile_names() if self.qemu_pid(name) is not None}

    def _wait_ready(self, deadline: float) -> None:
        uri = self.uri
        last: BaseException | None = None
        while True:
            daemon = self._daemon_pid
            if daemon is None or not pid_alive(daemon):
                raise RuntimeError(f"libvirtd exited during start-up; see {self.log_path}")
            if unix_socket_accepts(self.socket_path):
                try:

                    def probe() -> None:
                        conn = libvirt.open(uri)
                        try:
                            conn.getLibVersion()
                        finally:
                            conn.close()

                    call_with_deadline(probe, max(0.1, deadline - time.monotonic()), "readiness probe")
                    return
                except (libvirt.libvirtError, TimeoutError) as exc:
                    last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"libvirtd at {self.socket_path} not answering RPCs: {last}; see {self.log_path}"
                )
            time.sleep(0.005)

    def _dump_log_tail(self) -> None:
        with contextlib.suppress(OSError):
            tail = self.log_path.read_text(errors="replace")[-4000:]
            print(f"--- tail of {self.log_path} ---\n{tail}")  # pytest shows it on failure

    # The session-mode specifics: folder layout, environment, command.
    def _prepare_dir(self) -> None:
        _check_traversable(self.state_dir, NOBODY_UID if self._run_as_nobody else os.geteuid())
        for sub in ("config/libvirt", "cache", "home", "run"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        qemu_conf = self.config_dir / "libvirt" / "qemu.conf"
        if not qemu_conf.exists():
            # Without it libvirt spawns virtlogd for QEMU's stdout/stderr: one more process to leak.
            qemu_conf.write_text('stdio_handler = "file"\n')
        os.chmod(self.runtime_dir, 0o700)
        os.chmod(self.state_dir, 0o755)  # noqa: S103 - nobody must traverse it; nothing secret
        if self._run_as_nobody:
            for path in [self.state_dir, *self.state_dir.rglob("*")]:
                os.lchown(path, NOBODY_UID, NOGROUP_GID)

    def _daemon_env(self) -> dict[str, str]:
        s = str(self.state_dir)
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": f"{s}/home",
            "XDG_CONFIG_HOME": f"{s}/config",
            "XDG_CACHE_HOME": f"{s}/cache",
            "XDG_RUNTIME_DIR": f"{s}/run",
            "LC_ALL": "C",
        }

    def _supervisor_argv(self) -> list[str]:
        return [
            TINI, "-s", "--", BASH, "-c", _SUPERVISOR, "supervisor",
            str(self.state_dir), str(self.qemu_pid_dir), str(self.log_path), LIBVIRTD,
        ]  # fmt: skip

    def _supervisor_popen_kwargs(self) -> dict[str, Any]:
        if self._run_as_nobody:
            return {"user": NOBODY_UID, "group": NOGROUP_GID, "extra_groups": []}
        return {}

    def _start_supervisor(self) -> None:
        env = self._daemon_env()
        setup = self._supervisor_setup()
        if setup:
            env["SUPERVISOR_SETUP"] = setup
        with open(self.state_dir / "supervisor.log", "ab") as err:
            self._supervisor = subprocess.Popen(
                self._supervisor_argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd="/",
                start_new_session=True,
                **self._supervisor_popen_kwargs(),
            )
        line = self._read_supervisor_line(30.0)
        if line != "ready":
            log = (self.state_dir / "supervisor.log").read_text(errors="replace")
            raise RuntimeError(f"libvirtd supervisor failed to start ({line!r}): {log}")

    def _supervisor_setup(self) -> str:
        return ""

    def _supervisor_command(self, cmd: str) -> int:
        proc = self._supervisor
        assert proc is not None and proc.stdin is not None
        proc.stdin.write(cmd.encode() + b"\n")
        proc.stdin.flush()
        return int(self._read_supervisor_line(10.0))

    def _read_supervisor_line(self, timeout: float) -> str:
        proc = self._supervisor
        assert proc is not None and proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"libvirtd supervisor silent for {timeout}s")
        return proc.stdout.readline().decode().strip()

    def _stop_supervisor(self) -> None:
        proc, self._supervisor = self._supervisor, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write(b"quit\n")
            proc.stdin.close()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)
        if proc.stdout is not None:
            proc.stdout.close()

    def _remove_dir(self) -> None:
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)


def _destroy(dom: Any) -> None:
    """``dom.destroy()``, accepting the one error that still means "it is off now".

    If QEMU dies on its own (or a reconnect fails) while destroy waits for the domain job, libvirt
    reports OPERATION_INVALID "domain is not running" although the requested state is reached.
    """
    try:
        dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != _ERR_OPERATION_INVALID or dom.isActive():
            raise


def _check_traversable(path: Path, uid: int) -> None:
    """Fail early, with a useful message, if ``uid`` could not reach ``path`` (e.g. under /root)."""
    if uid == 0:
        return
    for parent in reversed(path.parents):
        st = parent.stat()
        ok = bool(st.st_mode & (stat.S_IXUSR if st.st_uid == uid else stat.S_IXOTH))
        if not ok:
            raise PermissionError(
                f"{parent} is not traversable by uid {uid}; put the libvirtd state dir under /tmp"
            )


# --------------------------------------------------------------------------------------------------
# System mode, root, private mount namespace: only for a real type='kvm' domain.

_PRIVATE_USERS = (
    "libvirt-qemu:x:64055:64055:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n",
    "libvirt-qemu:x:64055:\nkvm:x:64056:\nlibvirt:x:64057:\n",
)


class SystemLibvirtDaemon(LibvirtDaemon):
    """System-mode libvirtd as root, isolated so the host is untouched.

    It runs under ``unshare -m --propagation private`` with ``/run``, ``/var``, ``/etc/libvirt`` and
    (because Debian's driver insists on a ``libvirt-qemu`` user) ``/etc/passwd`` and ``/etc/group``
    bind-mounted to private copies inside ``state_dir``. ``qemu.conf`` runs QEMU as root with no
    cgroups, namespaces or security driver; ``libvirtd.conf`` puts both sockets in
    ``state_dir/sock`` with no auth. The first start probes QEMU capabilities (several seconds).
    Use only where ``kvm_usable()`` says yes; everything else runs on the session daemon.
    """

    mode: Literal["session", "system"] = "system"

    def __init__(
        self, state_dir: str | Path | None = None, *, rpc_timeout: float = DEFAULT_RPC_TIMEOUT
    ) -> None:
        """Prepare a system daemon; requires root (``unshare`` and bind mounts)."""
        if os.geteuid() != 0:
            raise PermissionError("SystemLibvirtDaemon needs root")
        super().__init__(state_dir, rpc_timeout=rpc_timeout)
        self._run_as_nobody = False

    @property
    def socket_path(self) -> Path:
        """Read-write socket (``unix_sock_dir`` in the private libvirtd.conf)."""
        return self.state_dir / "sock" / "libvirt-sock"

    @property
    def ro_socket_path(self) -> Path:
        """Read-only socket: system mode has a separate one, as root KubeVirt launchers do."""
        return self.state_dir / "sock" / "libvirt-sock-ro"

    @property
    def ro_uri(self) -> str:
        """URI of the read-only socket."""
        return f"qemu:///system?socket={self.ro_socket_path}"

    @property
    def runtime_dir(self) -> Path:
        """Host-side folder bind-mounted on /run inside the namespace."""
        return self.state_dir / "ns-run"

    @property
    def qemu_pid_dir(self) -> Path:
        """/run/libvirt/qemu inside the namespace, seen from the host."""
        return self.runtime_dir / "libvirt" / "qemu"

    @property
    def domain_config_dir(self) -> Path:
        """/etc/libvirt/qemu inside the namespace, seen from the host."""
        return self.state_dir / "ns-etc-libvirt" / "qemu"

    def start_daemon(self, timeout: float = SYSTEM_START_TIMEOUT) -> None:
        """Start the system daemon (default deadline covers the first capabilities probe)."""
        super().start_daemon(timeout)

    def restart(self, timeout: float = SYSTEM_START_TIMEOUT) -> None:
        """See ``LibvirtDaemon.restart``."""
        super().restart(timeout)

    def _own_processes(self) -> set[int]:
        """Processes naming the folder plus every process in the private mount namespace.

        System-mode QEMUs name only private paths (``/var/lib/libvirt/...``) in their command line,
        so the folder scan alone would miss them; membership in our namespace is exact.
        """
        own = super()._own_processes()
        tini = self.supervisor_pid
        if tini is None:
            return own
        try:
            ns = os.stat(f"/proc/{tini}/ns/mnt").st_ino
        except OSError:
            return own
        if ns == os.stat("/proc/self/ns/mnt").st_ino:
            return own  # never sweep the host's namespace (would match every process)
        keep = self._supervisor_tree()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in keep:
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{entry}/ns/mnt").st_ino == ns and pid_alive(int(entry)):
                        own.add(int(entry))
        return own

    def _prepare_dir(self) -> None:
        s = self.state_dir
        for sub in ("sock", "ns-run", "ns-var/lib/libvirt", "ns-var/cache/libvirt", "ns-var/log/libvirt",
                    "ns-var/tmp", "ns-etc-libvirt"):  # fmt: skip
            (s / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(s, 0o755)  # noqa: S103 - a test folder, nothing secret
        os.chmod(s / "ns-var/tmp", 0o1777)  # noqa: S103 - it is the namespace's /var/tmp
        for link, target in (("ns-var/run", "/run"), ("ns-var/lock", "/run/lock")):
            if not (s / link).is_symlink():
                (s / link).symlink_to(target)
        (s / "ns-etc-libvirt" / "qemu.conf").write_text(
            'user = "root"\ngroup = "root"\nstdio_handler = "file"\ncgroup_controllers = [ ]\n'
            'namespaces = [ ]\nsecurity_driver = "none"\n'
        )
        (s / "ns-etc-libvirt" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{s}/sock"\nauth_unix_ro = "none"\nauth_unix_rw = "none"\n'
            'unix_sock_ro_perms = "0777"\nunix_sock_rw_perms = "0700"\n'
        )
        passwd, group = _PRIVATE_USERS
        (s / "passwd").write_text(Path("/etc/passwd").read_text() + passwd)
        (s / "group").write_text(Path("/etc/group").read_text() + group)

    def _supervisor_setup(self) -> str:
        s = self.state_dir
        return " && ".join(
            [
                f"mount --bind '{s}/ns-run' /run",
                "mkdir -p /run/lock",
                f"mount --bind '{s}/ns-var' /var",
                f"mount --bind '{s}/ns-etc-libvirt' /etc/libvirt",
                f"mount --bind '{s}/passwd' /etc/passwd",
                f"mount --bind '{s}/group' /etc/group",
            ]
        )

    def _daemon_env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C"}

    def _supervisor_argv(self) -> list[str]:
        return [
            UNSHARE, "-m", "--propagation", "private", "--",
            TINI, "-s", "--", BASH, "-c", _SUPERVISOR, "supervisor",
            str(self.state_dir), str(self.qemu_pid_dir), str(self.log_path),
            LIBVIRTD, "--config", str(self.state_dir / "ns-etc-libvirt" / "libvirtd.conf"),
        ]  # fmt: skip


def system_mode_missing() -> str | None:
    """Return why system mode cannot run here (not root, no unshare, no binaries), None if it can."""
    if os.geteuid() != 0:
        return "system-mode libvirtd needs root"
    missing = missing_binaries([UNSHARE, "/usr/bin/mount"])
    if missing:
        return f"missing: {', '.join(missing)}"
    return None


# --------------------------------------------------------------------------------------------------
# KubeVirt-like launcher layout.

EMPTY_DIR: Final = "volumes/kubernetes.io~empty-dir"


@dataclass(frozen=True)
class LauncherSockets:
    """Where a KubeVirt-like launcher's libvirt socket appears on the "host", and how to reach it.

    ``socket_path`` is ``<pods_root>/<pod_uid>/volumes/kubernetes.io~empty-dir/libvirt-runtime/
    virtqemud-sock``, a symlink to the real daemon socket (see ``kubevirt_launcher`` for why).
    """

    pods_root: Path
    pod_uid: str
    empty_dir: Path  # <pods_root>/<pod_uid>/volumes/kubernetes.io~empty-dir
    socket_path: Path  # .../libvirt-runtime/virtqemud-sock
    ro_socket_path: Path | None  # .../libvirt-runtime/virtqemud-sock-ro (root launchers only)
    uri: str  # qemu+unix:///<mode>?socket=<socket_path>
    daemon: LibvirtDaemon

    @property
    def fits_sun_path(self) -> bool:
        """False when the path is too long for connect(2) as is (needs a short mount or /proc/self/fd)."""
        return len(os.fsencode(str(self.socket_path))) <= SUN_PATH_MAX


def kubevirt_launcher(pods_root: str | Path, pod_uid: str, daemon: LibvirtDaemon) -> LauncherSockets:
    """Expose ``daemon`` at the path KubeVirt gives a launcher pod's socket under ``pods_root``.

    What was found (and why this is a symlink, not a daemon started "there"):

    * session libvirtd names its socket ``$XDG_RUNTIME_DIR/libvirt/libvirt-sock`` (``unix_sock_dir``
      in libvirtd.conf changes only the folder, the name stays ``libvirt-sock``), while KubeVirt's
      launcher runs virtqemud whose socket is ``virtqemud-sock``: no configuration makes bookworm's
      monolithic libvirtd bind that name.
    * with a realistic pods root (``/var/lib/kubelet/pods``) or any temp folder, the full path is
      longer than the 107 bytes of ``sun_path``; libvirtd cannot bind there at all, and QEMU's
      monitor socket (under the daemon's config/runtime dirs) would not fit either.

    So the daemon keeps its short private socket and ``libvirt-runtime/virtqemud-sock`` is a
    symlink to it. ``connect()`` follows symlinks, the link survives daemon restarts (libvirtd
    re-creates the socket at the same target path), and ``os.stat`` reports a socket (``lstat``
    reports the link). A client connects either through the path directly when it fits
    (``fits_sun_path``) or through ``/proc/self/fd/N`` of an ``O_PATH`` descriptor when it does
    not; both are exercised in test_harness.py. The launcher's persistent-XML folder
    ``private/libvirt/qemu`` is a symlink to the daemon's, so ``<ns>_<name>.xml`` shows up where
    KubeVirt keeps it for non-root launchers.
    """
    root = Path(pods_root)
    empty_dir = root / pod_uid / EMPTY_DIR
    runtime = empty_dir / "libvirt-runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    link = runtime / "virtqemud-sock"
    _replace_symlink(link, daemon.socket_path)
    ro_link: Path | None = None
    if isinstance(daemon, SystemLibvirtDaemon):
        ro_link = runtime / "virtqemud-sock-ro"
        _replace_symlink(ro_link, daemon.ro_socket_path)
    private = empty_dir / "private" / "libvirt"
    private.mkdir(parents=True, exist_ok=True)
    daemon.domain_config_dir.mkdir(parents=True, exist_ok=True)
    _replace_symlink(private / "qemu", daemon.domain_config_dir)
    return LauncherSockets(
        pods_root=root,
        pod_uid=pod_uid,
        empty_dir=empty_dir,
        socket_path=link,
        ro_socket_path=ro_link,
        uri=f"qemu+unix:///{daemon.mode}?socket={link}",
        daemon=daemon,
    )


def _replace_symlink(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


@contextlib.contextmanager
def fd_socket_path(path: str | Path) -> Iterator[str]:
    """Yield ``/proc/self/fd/N`` for an ``O_PATH`` descriptor of ``path`` (closed afterwards).

    How a client reaches a socket whose path exceeds ``sun_path`` (KubeVirt host paths are ~121
    bytes): the kernel resolves the magic link at connect time. Valid only inside this process.
    """
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
