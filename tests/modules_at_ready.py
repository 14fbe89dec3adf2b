"""Runs the agent exactly as ``python -m otel_vmi_hv`` does and, once it is ready, reports which
modules it has loaded: the honest way to tell what a configuration imports, without adding anything to
the agent itself.

    python tests/modules_at_ready.py run      (the agent's own arguments; its environment as usual)

The agent's ``main`` runs on the main thread (it installs its signal handlers there). A watcher thread
asks ``/readyz`` on the agent's port through a bare socket, so that the watcher imports nothing the
agent does not import itself; when it answers 200 the watcher copies ``sys.modules`` and prints, to
stdout, one line per module and then an end marker:

    MODULE<TAB><name><TAB><its file, empty for built-in and namespace modules>
    MODULES-END

The agent keeps running until it is stopped the usual way (SIGTERM). Run as a script, not with
``-m``, so that no package of the tests is among the modules.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

LINE = "MODULE"
END = "MODULES-END"
POLL_SECONDS = 0.05
TIMEOUT_SECONDS = 60.0


def _ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return conn.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _report(port: int) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not _ready(port):
        if time.monotonic() > deadline:
            print(f"{END} (not ready within {TIMEOUT_SECONDS:.0f}s)", flush=True)
            return
        time.sleep(POLL_SECONDS)
    modules = dict(sys.modules)
    lines = [f"{LINE}\t{name}\t{getattr(module, '__file__', None) or ''}" for name, module in modules.items()]
    print("\n".join([*sorted(lines), END]), flush=True)


def main() -> int:
    sys.path[0] = os.getcwd()  # the search path `python -m otel_vmi_hv` would have, not tests/
    port = int(os.environ["OTEL_EXPORTER_PROMETHEUS_PORT"])
    threading.Thread(target=_report, args=(port,), name="modules-report", daemon=True).start()
    from otel_vmi_hv.cli import main as agent_main

    return agent_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
