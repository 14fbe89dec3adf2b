"""Command line: ``run`` (default), ``detect``, ``check-config``, ``config-doc``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from otel_vmi_hv import __version__
from otel_vmi_hv.config import OPTIONS, ConfigError, Settings, load_settings, unset_empty_variables
from otel_vmi_hv.server import ListenError
from otel_vmi_hv.server.tls_reload import server_context

log = logging.getLogger("otel_vmi_hv")

EXIT_CONFIG = 2
DETECT_TIMEOUT_SLACK = 5.0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    for option in OPTIONS:
        if option.flag:
            help_text = f"{option.help} (env {option.env}; allowed: {option.allowed})"
            common.add_argument(option.flag, dest=option.env, metavar="VALUE", help=help_text)
    parser = argparse.ArgumentParser(
        prog="otel-vmi-hv",
        description="Reports, for every running VMI on this node, whether it runs under KVM or QEMU TCG "
        "emulation, as the OpenTelemetry metric kubevirt_vmi_hypervisor_info.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"otel-vmi-hv {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="run the agent (default)")
    detect_help = "print every VMI with its hypervisor type once, then exit"
    detect = commands.add_parser("detect", parents=[common], help=detect_help)
    detect.add_argument("--output", choices=("table", "json"), default="table")
    check_help = "validate and print the effective configuration"
    commands.add_parser("check-config", parents=[common], help=check_help)
    commands.add_parser("config-doc", help="print the configuration reference (Markdown)")
    return parser


def entry() -> int:
    """The program (``otel-vmi-hv``, ``python -m otel_vmi_hv``): ``main``, then no more logging.

    The process exits next. A thread the agent could not wait for (a libvirt call on a hung daemon,
    a detection or an API request in flight) may still finish and log; its write to stderr would
    race the interpreter's last flush of stderr, and CPython aborts the process when another thread
    holds that stream's lock then ("could not acquire lock ... at interpreter shutdown").
    """
    code = main()
    logging.disable(logging.CRITICAL)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    if command == "config-doc":
        sys.stdout.write(config_reference())
        return 0
    flags = {option.env: getattr(args, option.env) for option in OPTIONS if option.flag}
    unset_empty_variables(os.environ)
    try:
        # The HTTP server's own context builder loads the TLS files: the same checks at start as later.
        settings = load_settings(os.environ, flags, tls_check=server_context)
    except ConfigError as error:
        return configuration_error(str(error))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if command == "check-config":
        return check_config(settings)
    if command == "detect":
        return detect(settings, args.output)
    return run(settings)


def configuration_error(message: str) -> int:
    print(f"otel-vmi-hv: configuration error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def check_config(settings: Settings) -> int:
    origins = dict(settings.origins)
    for name in sorted(set(Settings.__dataclass_fields__) - {"origins"}):
        value = getattr(settings, name)
        if name == "resource_attributes":
            value = ",".join(f"{k}={v}" for k, v in value)
        elif isinstance(value, tuple):
            value = ",".join(value) or "none"
        print(f"{name:20} = {value}" + (f"    ({origins[name]})" if name in origins else ""))
    return 0


def run(settings: Settings) -> int:
    from otel_vmi_hv.agent import Agent

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    where = (settings.node_name, settings.source, settings.libvirt_uri)
    log.info("otel-vmi-hv %s starting: node %s, source %s, libvirt %s", __version__, *where)
    if settings.sdk_disabled:
        log.warning("OTEL_SDK_DISABLED=true: the OpenTelemetry SDK is off, no metric will be exported")
    try:
        agent = Agent(settings)
        agent.start()
    except ListenError as error:
        # The configuration was valid but this host cannot honour it (port taken, privileged
        # port, unknown host): a configuration error all the same, so the same exit status.
        variables = "OTEL_EXPORTER_PROMETHEUS_HOST/OTEL_EXPORTER_PROMETHEUS_PORT"
        return configuration_error(f"{variables} ({error.host}:{error.port}): cannot listen: {error.reason}")
    except OSError as error:
        log.error("cannot start: %s", error)
        return 1
    stop.wait()
    agent.stop()
    return 0


def detect(settings: Settings, output: str) -> int:
    from otel_vmi_hv.agent import Agent
    from otel_vmi_hv.detect_report import render_json, render_table, rows
    from otel_vmi_hv.emulation.vmi_events import events_permission

    agent = Agent(settings, with_telemetry=False, cross_check=True)
    agent.start()
    try:
        deadline = time.monotonic() + settings.libvirt_timeout + DETECT_TIMEOUT_SLACK
        # A one-shot debugging command: the first failed listing is the answer, not a retry loop.
        while not agent.synced.wait(0.05) and agent.source.last_error is None and time.monotonic() < deadline:
            pass
        if not agent.synced.is_set():
            why = f"{settings.source} source: {agent.source.last_error or 'no answer in time'}"
            print(f"otel-vmi-hv: could not list VMIs from the {why}", file=sys.stderr)
            return 1
        agent.tracker.wait_idle(settings.libvirt_timeout * 2 + DETECT_TIMEOUT_SLACK)
        # The Node, the KubeVirt CR and the emulated VMIs' launcher pods read, their reasons published.
        agent.emulation.wait_settled(max(0.0, deadline + DETECT_TIMEOUT_SLACK - time.monotonic()))
        detections = agent.tracker.detections()
        events = events_permission(settings, agent.emulation, [vmi for vmi, _ in detections])
        reasons, unexplained = agent.emulation.explanations(), ("unknown", "not explained in time")
        report = rows(detections, settings.node_name, lambda v: reasons.get(v.key, unexplained), events)
        problems, accelerator = agent.emulation.problems(), agent.emulation.describe_accelerator()
    finally:
        agent.stop(budget=1.0)
    table = render_table(report, problems, accelerator, events)
    sys.stdout.write(render_json(report) if output == "json" else table)
    return 0


CONFIG_PAGE = (
    "# Configuration\n\n<!-- generated by `otel-vmi-hv config-doc` from otel_vmi_hv/config/options.py "
    "(`make docs`); tests/unit/test_docs.py keeps it current -->\n\nStandard OpenTelemetry variables and "
    "the agent's own `OTEL_VMI_HV_*`, checked at start: a bad value, or one the host cannot honour (the "
    "port in use or below 1024 without `CAP_NET_BIND_SERVICE`, a host that does not resolve), stops the "
    "agent with exit status 2 and one line naming the variable. Flags win over the environment; empty "
    "values count as unset. Variables without a flag are read by the OpenTelemetry SDK itself, once the "
    "agent has validated them (header values are never logged). `otel-vmi-hv check-config` prints the "
    "effective values and where each came from.\n\n"
    "| variable | flag | default | allowed | meaning |\n|---|---|---|---|---|\n{rows}\n\n"
    "## Read by the OpenTelemetry SDK\n\nOTLP headers, certificates, client key, insecure, timeout, "
    "compression, temporality and the SDK's other variables are read by the OpenTelemetry classes "
    "themselves; the agent validates every `OTEL_*` variable they read (the `_METRICS_` variants included; "
    "`tests/unit/test_config.py` compares the list with the installed SDK's), and removes empty ones before "
    "the SDK starts, so an empty value means unset there too. Header values are never logged.\n\n"
    "The OpenTelemetry resource each OTLP export carries (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` "
    'and what the agent detects): [metrics.md, "Resource attributes (OTLP)"]'
    "(metrics.md#resource-attributes-otlp).\n"
)


def config_reference() -> str:
    """docs/configuration.md, from the option table."""
    rows = (
        f"| `{o.env}` | {f'`{o.flag}`' if o.flag else ''} | {o.documented_default} | {o.allowed} | {o.help} |"
        for o in OPTIONS
    )
    return CONFIG_PAGE.format(rows="\n".join(rows))
