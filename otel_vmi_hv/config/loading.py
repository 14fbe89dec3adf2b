"""``load_settings``: read every option of the table, then run the checks that need several values.

Validation happens before anything starts, so a typo in a DaemonSet is a crash-loop with a one-line
reason (exit status 2) instead of an agent that silently exports nothing. Each rule that involves
more than one value (or the host) is one named function of ``CHECKS``, run in order on a ``_Draft``.

The TLS material is loaded by a function the caller passes (``tls_check``): the CLI gives the HTTP
server's own context builder, so the same checks run at start as at every connection, without this
package importing the server.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import otel_vmi_hv.config.parsers as parse
from otel_vmi_hv.config.options import (
    KUBEVIRT_LIBVIRT_URI,
    OPTIONS,
    SECRET_OPTIONS,
    STANDALONE_LIBVIRT_URI,
    Option,
)
from otel_vmi_hv.config.settings import ConfigError, Settings

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path
_KUBE_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?")

TlsCheck = Callable[[str, str, str | None], object]
"""Loads (certificate, key, client CA or None) as the server will; raises ``OSError`` (``ssl.SSLError``
is one) when they cannot be used."""


@dataclass
class _Draft:
    """The values read so far, what each came from, and every parsed option by variable name."""

    environ: Mapping[str, str]
    tls_check: TlsCheck | None
    values: dict[str, Any] = field(default_factory=dict)  # Settings fields
    origins: dict[str, str] = field(default_factory=dict)  # Settings field -> env, flag or default
    by_env: dict[str, Any] = field(default_factory=dict)  # every option that has a value, as given


def unset_empty_variables(environ: MutableMapping[str, str]) -> list[str]:
    """Remove every empty (or blank) OTEL_* variable, and return their names.

    The OpenTelemetry specification says an empty value means unset, but the Python SDK parses
    some anyway (``float("")`` for OTEL_EXPORTER_OTLP_TIMEOUT=): removing them before the SDK
    reads the environment makes "empty means unset" hold everywhere, not only in this module.
    """
    empty = [name for name, value in environ.items() if name.startswith("OTEL_") and not value.strip()]
    for name in empty:
        del environ[name]
    return empty


def load_settings(
    environ: Mapping[str, str],
    flags: Mapping[str, str | None] | None = None,
    tls_check: TlsCheck | None = None,
) -> Settings:
    """Build Settings from the environment and CLI flags; raise ConfigError on bad input.

    Each option's value is the flag if given, else a non-blank environment value (empty counts as
    unset, as the OpenTelemetry specification asks), else the default. An unset option fills its
    field only if no option before it did (a metrics-only twin keeps the value of the variable for
    every signal). Without ``tls_check`` the TLS files are only checked to come as a pair, not
    loaded (for callers that never serve HTTPS, such as tests of other settings).
    """
    draft, flags = _Draft(environ, tls_check), flags or {}
    for option in OPTIONS:
        raw, origin = flags.get(option.env), "flag"
        if raw is None and environ.get(option.env, "").strip():
            raw, origin = environ[option.env], "env"
        elif raw is None:
            raw, origin = option.default, "default"
        if raw is not None:
            draft.by_env[option.env] = parsed = _parse(option, raw, origin)
            if option.field is not None:
                draft.values[option.field], draft.origins[option.field] = parsed, origin
        elif option.field is not None:
            draft.values.setdefault(option.field, None)
    for check in CHECKS:
        check(draft)
    draft.values["origins"] = tuple(sorted(draft.origins.items()))
    return Settings(**draft.values)


# ----------------------------------------------------------------------------- one option at a time


def _parse(option: Option, raw: str, origin: str) -> Any:
    """The parsed value, or a ConfigError naming the variable (or flag), the value unless secret,
    and what is allowed."""
    try:
        return option.parse(raw)
    except ConfigError as error:
        if option.env in str(error):
            raise
        raise ConfigError(f"{option.env}: {error}") from None
    except ValueError:
        source = "flag " + (option.flag or "") if origin == "flag" else option.env
        shown = " (value not shown)" if option.env in SECRET_OPTIONS else f"={raw!r}"
        raise ConfigError(f"{source}{shown} is invalid: expected {option.allowed}") from None


# ----------------------------------------------------------------------------- checks across options


def _grpc_compression(draft: _Draft) -> None:
    """The gRPC exporter raises on "none" and "deflate": refuse them at start instead."""
    if "otlp" not in draft.values["metrics_exporters"] or draft.values["otlp_protocol"] != "grpc":
        return
    for variable in ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"):
        if (compression := draft.by_env.get(variable, "gzip")) != "gzip":
            raise ConfigError(
                f"{variable}={compression!r} cannot be used with the grpc protocol: "
                "gzip, or unset for none (deflate and none exist only for http/protobuf)"
            )


def _service_name(draft: _Draft) -> None:
    """OTEL_SERVICE_NAME wins, then service.name in OTEL_RESOURCE_ATTRIBUTES, then the default: the
    order of the exported resource (export/resource.py), shown by check-config."""
    if draft.origins.get("service_name") != "default":
        return
    from_attributes = dict(draft.values["resource_attributes"]).get("service.name")
    if from_attributes:
        draft.values["service_name"] = from_attributes
        draft.origins["service_name"] = draft.origins["resource_attributes"]


def _source(draft: _Draft) -> None:
    """auto: kubernetes in a pod or with KUBECONFIG, else libvirt; an explicit kubernetes source
    needs a cluster to talk to (in a pod, KUBECONFIG or ~/.kube/config)."""
    kubeconfig = draft.environ.get("KUBECONFIG", "").strip() or None
    in_pod = bool(draft.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(IN_CLUSTER_TOKEN)
    cluster = in_pod or kubeconfig is not None
    if draft.values["source"] == "auto":
        draft.values["source"] = "kubernetes" if cluster else "libvirt"
    elif draft.values["source"] == "kubernetes" and not cluster:
        kubeconfig = os.path.expanduser("~/.kube/config")
        if not os.path.exists(kubeconfig):
            raise ConfigError(
                "OTEL_VMI_HV_SOURCE='kubernetes' cannot be used: not running in a pod "
                "(no KUBERNETES_SERVICE_HOST and service-account token) and no KUBECONFIG or ~/.kube/config"
            )
    draft.values["kubeconfig"] = kubeconfig


def _node_name(draft: _Draft) -> None:
    """Unset: $NODE_NAME (the downward API in the DaemonSet), else the host name. With the
    kubernetes source the node name becomes the value of the label selector kubevirt.io/nodeName=<node>:
    a comma or "=" would silently change the selector, an invalid value would be refused on every
    request."""
    if draft.values["node_name"] is None:
        draft.values["node_name"] = parse.node_name(draft.environ.get("NODE_NAME") or socket.gethostname())
        draft.origins["node_name"] = "default"
    node = draft.values["node_name"]
    if draft.values["source"] != "kubernetes" or _KUBE_NODE_NAME.fullmatch(node):
        return
    from_host = draft.origins.get("node_name") == "default"
    hint = " (it came from the host name; set OTEL_VMI_HV_NODE_NAME or NODE_NAME)" if from_host else ""
    raise ConfigError(
        f"OTEL_VMI_HV_NODE_NAME={node!r} is not a Kubernetes node name usable in a label "
        f"selector: lowercase letters, digits, '-' and '.', at most 63 characters{hint}"
    )


def _libvirt_uri(draft: _Draft) -> None:
    """Unset: the default of the resolved source; placeholders only where the source fills them."""
    uri = draft.values["libvirt_uri"]
    source = draft.values["source"]
    if uri is None:
        draft.values["libvirt_uri"] = (
            KUBEVIRT_LIBVIRT_URI if source == "kubernetes" else STANDALONE_LIBVIRT_URI
        )
        draft.origins["libvirt_uri"] = "default"
    elif source == "libvirt" and "{" in uri.replace("{{", ""):
        auto = " (auto: no cluster found)" if draft.by_env["OTEL_VMI_HV_SOURCE"] == "auto" else ""
        raise ConfigError(
            f"OTEL_VMI_HV_LIBVIRT_URI={uri!r} has placeholders, which only the kubernetes source fills "
            f"(the source is libvirt{auto})"
        )


def _export_timeout(draft: _Draft) -> None:
    """The timeout must not exceed the interval; a default timeout follows a shorter interval
    (common in tests and demos) instead of demanding that the timeout be set too."""
    timeout, interval = draft.values["export_timeout_ms"], draft.values["export_interval_ms"]
    if timeout <= interval:
        return
    if draft.origins.get("export_timeout_ms") == "default":
        draft.values["export_timeout_ms"] = interval
        return
    raise ConfigError(
        f"OTEL_METRIC_EXPORT_TIMEOUT={timeout} is larger than OTEL_METRIC_EXPORT_INTERVAL={interval}: "
        "the timeout must not exceed the interval"
    )


def _tls_pair(draft: _Draft) -> None:
    """HTTPS needs a certificate and its key; a client CA alone means neither is set."""
    cert, key, client_ca = (f"OTEL_VMI_HV_TLS_{name}_FILE" for name in ("CERT", "KEY", "CLIENT_CA"))
    given = [env for env in (cert, key, client_ca) if env in draft.by_env]
    if given and given[:2] != [cert, key]:
        missing = key if given[0] == cert else cert
        raise ConfigError(
            f"{given[0]} is set but {missing} is not: HTTPS needs both a certificate and its key"
        )


def _load_tls_material(draft: _Draft) -> None:
    """Load the TLS material now, so a wrong path or a key that does not match fails at start
    (the client CA separately, so the message names the file at fault)."""
    cert, key, client_ca = (draft.values[f"tls_{name}_file"] for name in ("cert", "key", "client_ca"))
    if not (cert and key and draft.tls_check):
        return
    pair = f"OTEL_VMI_HV_TLS_CERT_FILE={cert!r} / OTEL_VMI_HV_TLS_KEY_FILE={key!r}"
    with_ca = [(client_ca, f"OTEL_VMI_HV_TLS_CLIENT_CA_FILE={client_ca!r}")] if client_ca else []
    for ca, files in [(None, pair), *with_ca]:
        try:
            draft.tls_check(cert, key, ca)
        except OSError as error:
            raise ConfigError(f"{files} cannot be used: {error}") from None


CHECKS: tuple[Callable[[_Draft], None], ...] = (
    _grpc_compression,
    _service_name,
    _source,
    _node_name,
    _libvirt_uri,
    _export_timeout,
    _tls_pair,
    _load_tls_material,
)
