"""The real Prometheus server (Debian's 2.42 build) scraping loopback targets, plus ``promtool``.

Why the real server rather than parsing /metrics in the test: Prometheus is the consumer the
contract is written for. It rejects what a hand-written parser would accept (duplicate series, bad
escaping, a HELP/TYPE mismatch), it applies staleness when a series disappears, and its query API
is what dashboards and alerts see.

Measured behaviour worth knowing when writing tests against it:

* ``/-/ready`` answers within ~0.1-0.3 s of start, but the first scrape happens only ~5-6 s later:
  the scrape manager applies discovered targets on a fixed 5 s tick (no flag shortens it in 2.42).
  Later scrapes follow ``scrape_interval`` (1 s here). Use ``wait_for`` with a deadline >= 15 s for
  the first sample, never a sleep.
* When a series vanishes from a target, Prometheus writes a staleness marker at the next scrape and
  an instant query stops returning it at once (no 5 min lookback).
* Every process listens on 127.0.0.1 only; storage lives in a temp folder removed by ``stop()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from tests.agent_process import DeadlinePassed, wait_until
from tests.harness.ports import LOOPBACK, free_port, wait_for_port

PROMETHEUS: Final = "/usr/bin/prometheus"
PROMTOOL: Final = "/usr/bin/promtool"
SETPRIV: Final = "/usr/bin/setpriv"


def missing_binaries() -> list[str]:
    """Return the Prometheus programs that are not installed (empty when all are)."""
    return [p for p in (PROMETHEUS, PROMTOOL) if not os.access(p, os.X_OK)]


def promtool_check_metrics(text: str | bytes, timeout: float = 30.0) -> tuple[int, str]:
    """Lint an exposition with ``promtool check metrics`` (text format 0.0.4) and return (rc, output).

    rc 0 means clean; otherwise output lists each problem (missing HELP, bad names, parse errors).
    promtool prints its findings on stderr, so both streams are returned together.
    """
    data = text.encode() if isinstance(text, str) else text
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=data, capture_output=True, timeout=timeout, check=False
    )
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    return proc.returncode, out


def _die_with_parent() -> list[str]:
    """Command prefix making the kernel SIGTERM the child when the test process dies (even by SIGKILL).

    ``setpriv --pdeathsig`` sets PR_SET_PDEATHSIG and execs, so no Python runs between fork and
    exec (``preexec_fn`` is unsafe once threads exist). The signal fires when the *thread* that
    spawned the child exits: start peers from a thread that lives as long as they should (pytest's
    main thread does). Without setpriv the prefix is empty and the finalizers are the only net.
    """
    return [SETPRIV, "--pdeathsig", "TERM", "--"] if os.access(SETPRIV, os.X_OK) else []


def scrape_config(
    targets: Sequence[str],
    *,
    job: str = "agent",
    scrape_interval: str = "1s",
    metrics_path: str = "/metrics",
) -> dict[str, Any]:
    """Return one ``scrape_configs`` entry for ``targets`` (``host:port`` strings on 127.0.0.1)."""
    for target in targets:
        host = target.rsplit(":", 1)[0]
        if host not in (LOOPBACK, "localhost"):
            raise ValueError(f"target {target!r} is not on loopback; the harness never scrapes other hosts")
    return {
        "job_name": job,
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval,
        "metrics_path": metrics_path,
        "static_configs": [{"targets": list(targets)}],
    }


class PrometheusError(RuntimeError):
    """The query API answered with an error (bad PromQL, server problem)."""


class PrometheusServer:
    """A Prometheus server on 127.0.0.1:<free port> with its own config and storage folder.

    Usage::

        prom = PrometheusServer(["127.0.0.1:9464"]).start()
        rows = prom.wait_for('kubevirt_vmi_hypervisor_info', lambda r: len(r) == 2, timeout=20)
        prom.stop()
    """

    def __init__(
        self,
        targets: Sequence[str] = (),
        *,
        scrape_interval: str = "1s",
        extra_scrape_configs: Sequence[dict[str, Any]] = (),
        job: str = "agent",
        binary: str = PROMETHEUS,
    ) -> None:
        """Prepare (not start) a server scraping ``targets`` every ``scrape_interval``.

        ``extra_scrape_configs`` are appended verbatim (e.g. a second job with other labels).
        """
        self.binary = binary
        self.scrape_interval = scrape_interval
        configs: list[dict[str, Any]] = []
        if targets:
            configs.append(scrape_config(targets, job=job, scrape_interval=scrape_interval))
        configs.extend(extra_scrape_configs)
        self.config: dict[str, Any] = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": configs,
        }
        self.workdir = Path(tempfile.mkdtemp(prefix="ovh-prometheus-", dir="/tmp"))
        self.config_path = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "prometheus.log"
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None  # time.monotonic() when the process was spawned
        self.ready_seconds: float | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        if self.port is None:
            raise RuntimeError("Prometheus not started")
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0, attempts: int = 3) -> PrometheusServer:
        """Write the config, start Prometheus and return once ``/-/ready`` says 200.

        A port taken between choosing and binding makes Prometheus exit at once; that is retried
        on a fresh port (``attempts`` times).
        """
        # JSON is valid YAML: no YAML library needed.
        self.config_path.write_text(json.dumps(self.config, indent=2))
        last: Exception | None = None
        for _ in range(attempts):
            self.port = free_port()
            t0 = time.monotonic()
            self._spawn()
            try:
                assert self.process is not None
                wait_for_port(self.port, timeout, self.process)
                self._wait_ready(t0 + timeout)
            except (RuntimeError, TimeoutError) as exc:
                last = exc
                self._terminate()
                continue
            self.ready_seconds = time.monotonic() - t0
            return self
        raise RuntimeError(f"Prometheus did not start: {last}; log:\n{self.log_tail()}")

    def _spawn(self) -> None:
        args = [
            *_die_with_parent(),
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=info",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    def _wait_ready(self, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}")
            if time.monotonic() >= deadline:
                raise TimeoutError("prometheus not ready")
            time.sleep(0.02)

    def _api(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422 carry a JSON error body
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query now; return the vector as ``[{"metric": {...}, "value": [t, "v"]}]``.

        A scalar or string result comes back as a one-element list ``[{"metric": {}, "value": ...}]``.
        """
        data = self._api("/api/v1/query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def series(self, match: str) -> list[dict[str, str]]:
        """Return every series ever stored matching the selector (staleness ignored)."""
        now = time.time()
        data = self._api("/api/v1/series", {"match[]": match, "start": str(now - 3600), "end": str(now)})
        return list(data)

    def targets(self) -> list[dict[str, Any]]:
        """Return the active targets with their health, last error and last scrape time."""
        return list(self._api("/api/v1/targets", {"state": "active"})["activeTargets"])

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 20.0,
        interval: float = 0.2,
    ) -> list[dict[str, Any]]:
        """Re-run ``query(expr)`` until ``predicate(result)`` holds; return that result.

        Raises ``TimeoutError`` with the last result and the targets' scrape errors, which is what
        one needs to see when a test fails here.
        """
        last: list[dict[str, Any]] = []

        def check() -> tuple[list[dict[str, Any]]] | None:
            last[:] = self.query(expr)
            return (last,) if predicate(last) else None  # truthy even when the awaited result is []

        try:
            return wait_until(check, timeout, expr, interval)[0]
        except DeadlinePassed:
            health = [(t.get("scrapeUrl"), t.get("health"), t.get("lastError")) for t in self.targets()]
            raise TimeoutError(
                f"{expr!r} did not satisfy the predicate within {timeout}s; last result {last}; "
                f"targets {health}"
            ) from None

    def log_tail(self, size: int = 4000) -> str:
        """Last ``size`` characters of the server log."""
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def _terminate(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 10 s), then remove its folder. Idempotent."""
        self._terminate()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.workdir)

    def __enter__(self) -> PrometheusServer:
        """Start if not started; the block guarantees ``stop()``."""
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop whatever happened inside the block."""
        self.stop()
