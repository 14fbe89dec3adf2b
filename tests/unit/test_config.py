"""Configuration: every bad value is refused with a message naming the variable; flags win over env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from otel_vmi_hv.config import (
    OPTION_BY_ENV,
    OPTIONS,
    SECRET_OPTIONS,
    ConfigError,
    load_settings,
    parse_duration,
    unset_empty_variables,
)

# Variables of the installed OpenTelemetry packages that nothing on the agent's path reads (traces,
# logs, auto-instrumentation, other exporters): a new SDK variable is either validated or listed here.
NOT_READ_BY_THE_AGENT = {
    "OTEL_ATTRIBUTE_COUNT_LIMIT",  # span and log record attributes
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_BLRP_EXPORT_TIMEOUT",
    "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BLRP_MAX_QUEUE_SIZE",
    "OTEL_BLRP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_CONFIG_FILE",  # read by opentelemetry-instrument's configurator only
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_EXPORTER_ZIPKIN_ENDPOINT",
    "OTEL_EXPORTER_ZIPKIN_TIMEOUT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_LOG_LEVEL",  # defined by the SDK, read by none of its modules
    "OTEL_LOGS_EXPORTER",
    "OTEL_PROPAGATORS",  # trace context propagation
    "OTEL_PYTHON_ID_GENERATOR",
    "OTEL_PYTHON_LOGGER_CONFIGURATOR",
    "OTEL_PYTHON_LOGGER_PROVIDER",
    "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED",
    "OTEL_PYTHON_METER_CONFIGURATOR",
    "OTEL_PYTHON_METER_PROVIDER",  # the agent builds its MeterProvider, never the global one
    "OTEL_PYTHON_TRACER_CONFIGURATOR",
    "OTEL_PYTHON_TRACER_PROVIDER",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
} | {  # the traces and logs twins of every per-signal OTLP variable (options.per_signal)
    option.env.replace("_METRICS_", f"_{signal}_")
    for option in OPTIONS
    if option.default_doc in OPTION_BY_ENV
    for signal in ("TRACES", "LOGS")
}

BAD_VALUES = {
    "OTEL_METRICS_EXPORTER": "prometheus,zipkin",
    "OTEL_EXPORTER_PROMETHEUS_HOST": "local host",
    "OTEL_EXPORTER_PROMETHEUS_PORT": "94640",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://collector:4317",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:port",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "thrift",
    "OTEL_EXPORTER_OTLP_HEADERS": "authorization",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "=x",
    "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem",
    "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE": "/",  # a directory passes os.access, not the SDK
    "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/nonexistent/key.pem",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY": "/",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/nonexistent/client.pem",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE": "/proc/self/nonexistent",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "abc",
    "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "zstd",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "sometimes",
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "exponential",
    "OTEL_METRICS_EXEMPLAR_FILTER": "ALWAYS_ON",  # the SDK compares case-sensitively
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "process,no_such_detector",
    "OTEL_PYTHON_CONTEXT": "threadlocal_context",
    "OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER": "vault",
    "OTEL_PYTHON_EXPORTER_OTLP_GRPC_METRICS_CREDENTIAL_PROVIDER": "vault",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER": "vault",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER": "vault",
    "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES": "UNAVAILABLE,SOMETIMES",
    "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED": "yes",
    "OTEL_VMI_HV_WEB_MAX_CONNECTIONS": "0",
    "OTEL_VMI_HV_WEB_MAX_REQUESTS": "many",
    "OTEL_VMI_HV_WEB_READ_HEADER_TIMEOUT": "0s",
    "OTEL_VMI_HV_WEB_IDLE_TIMEOUT": "2h",
    "OTEL_EXPORTER_OTLP_INSECURE": "yes",
    "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "1",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "-3",
    # (OTEL_EXPORTER_OTLP_TIMEOUT="" is unset: test_empty_otel_variables_are_removed_before_the_sdk)
    "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd",
    "OTEL_METRIC_EXPORT_INTERVAL": "10s",
    "OTEL_METRIC_EXPORT_TIMEOUT": "0",
    "OTEL_SERVICE_NAME": "agent\x07",
    "OTEL_RESOURCE_ATTRIBUTES": "team",
    "OTEL_SDK_DISABLED": "maybe",
    "OTEL_VMI_HV_NODE_NAME": "worker 1",
    "OTEL_VMI_HV_SOURCE": "docker",
    "OTEL_VMI_HV_LIBVIRT_URI": "qemu:///system?socket={socket}",
    "OTEL_VMI_HV_LIBVIRT_TIMEOUT": "forever",
    "OTEL_VMI_HV_LOG_LEVEL": "verbose",
    "OTEL_VMI_HV_PODS_ROOT": "pods",
    "OTEL_VMI_HV_PROC_ROOT": "/nonexistent/proc",
    "OTEL_VMI_HV_RESYNC_INTERVAL": "0s",
    "OTEL_VMI_HV_TLS_CERT_FILE": "cert.pem",
    "OTEL_VMI_HV_TLS_KEY_FILE": "key.pem",
    "OTEL_VMI_HV_TLS_CLIENT_CA_FILE": "ca.pem",
    "OTEL_VMI_HV_KVM_DEVICE": "dev/kvm",
    "OTEL_VMI_HV_EVENTS": "yes",
    "OTEL_VMI_HV_RELIST_SPREAD": "11m",
    "OTEL_VMI_HV_WATCH_SILENCE_TIMEOUT": "0s",
}


def test_every_option_has_a_bad_value_case() -> None:
    assert set(BAD_VALUES) == {option.env for option in OPTIONS}


@pytest.mark.parametrize(("variable", "value"), sorted(BAD_VALUES.items()))
def test_bad_value_names_the_variable_and_value(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({variable: value})
    message = str(raised.value)
    assert variable in message
    if variable in SECRET_OPTIONS:
        assert value not in message, "header values carry tokens: never echoed"
    else:
        assert repr(value) in message or value in message


@pytest.mark.parametrize(
    "variable", ["OTEL_VMI_HV_TLS_CERT_FILE", "OTEL_VMI_HV_TLS_KEY_FILE", "OTEL_VMI_HV_TLS_CLIENT_CA_FILE"]
)
def test_tls_settings_alone_are_explained(variable: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{variable} is set but .* is not"):
        load_settings({variable: str(tmp_path / "x.pem")})


def test_tls_material_is_loaded_by_the_check_the_caller_passes(tmp_path: Path) -> None:
    """The server's context builder, passed in, refuses files that are not a certificate and key."""
    from otel_vmi_hv.server.tls_reload import server_context

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    env = {"OTEL_VMI_HV_TLS_CERT_FILE": str(cert), "OTEL_VMI_HV_TLS_KEY_FILE": str(key), "NODE_NAME": "n"}
    with pytest.raises(ConfigError, match=r"OTEL_VMI_HV_TLS_CERT_FILE=.* cannot be used"):
        load_settings(env, tls_check=server_context)
    assert load_settings(env).tls_cert_file == str(cert), "without a check the pair is only paired"


def test_cli_refuses_unusable_tls_material_with_exit_2(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    result = _cli(
        "check-config",
        env={
            "OTEL_VMI_HV_SOURCE": "libvirt",
            "OTEL_VMI_HV_TLS_CERT_FILE": str(cert),
            "OTEL_VMI_HV_TLS_KEY_FILE": str(key),
        },
    )
    assert result.returncode == 2
    assert "OTEL_VMI_HV_TLS_CERT_FILE" in result.stderr


def test_credentials_in_an_endpoint_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://agent:hunter2@collector:4317"})
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in str(raised.value)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize("node", ["worker-1,tenant=a", "Worker-1", "w" * 64, "worker_1"])
def test_kubernetes_node_name_must_fit_a_label_selector(node: str, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(ConfigError, match="OTEL_VMI_HV_NODE_NAME"):
        load_settings({"KUBECONFIG": str(kubeconfig), "OTEL_VMI_HV_NODE_NAME": node})
    assert load_settings({"OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_NODE_NAME": node}).node_name == node


def test_defaults_match_the_documented_contract() -> None:
    settings = load_settings({"NODE_NAME": "worker-1"})
    assert settings.metrics_exporters == ("prometheus", "otlp")
    assert (settings.prometheus_host, settings.prometheus_port) == ("0.0.0.0", 9464)
    assert settings.otlp_protocol == "grpc"
    assert (settings.export_interval_ms, settings.export_timeout_ms) == (60000, 30000)
    assert settings.service_name == "otel-vmi-hv"
    assert settings.node_name == "worker-1"
    assert settings.source == "libvirt"
    assert settings.libvirt_uri == "qemu:///system"  # the README's defaults, spelled out
    assert settings.libvirt_timeout == 5.0
    assert settings.log_level == "info"
    assert settings.proc_root is None  # the proc method is off unless asked for


def test_service_name_from_resource_attributes_unless_otel_service_name_is_set() -> None:
    attributes = {"OTEL_RESOURCE_ATTRIBUTES": "team=vmi,service.name=fromattrs", "NODE_NAME": "n"}
    settings = load_settings(attributes)
    assert (settings.service_name, dict(settings.origins)["service_name"]) == ("fromattrs", "env")
    assert load_settings({**attributes, "OTEL_SERVICE_NAME": "fromenv"}).service_name == "fromenv"


def test_flags_win_over_environment() -> None:
    settings = load_settings(
        {"OTEL_VMI_HV_NODE_NAME": "from-env", "OTEL_VMI_HV_LIBVIRT_TIMEOUT": "2s"},
        {"OTEL_VMI_HV_NODE_NAME": "from-flag", "OTEL_VMI_HV_LIBVIRT_TIMEOUT": None},
    )
    assert settings.node_name == "from-flag"
    assert settings.libvirt_timeout == 2.0
    assert dict(settings.origins)["node_name"] == "flag"


def test_bad_flag_is_named_as_a_flag() -> None:
    with pytest.raises(ConfigError, match="--libvirt-timeout='soon'"):
        load_settings({}, {"OTEL_VMI_HV_LIBVIRT_TIMEOUT": "soon"})


def test_empty_environment_values_count_as_unset() -> None:
    settings = load_settings(
        {"OTEL_METRICS_EXPORTER": "", "OTEL_EXPORTER_PROMETHEUS_PORT": " ", "NODE_NAME": "n"}
    )
    assert settings.metrics_exporters == ("prometheus", "otlp")
    assert settings.prometheus_port == 9464


def test_none_exporter_disables_all_and_cannot_be_combined() -> None:
    assert load_settings({"OTEL_METRICS_EXPORTER": "none"}).metrics_exporters == ()
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_settings({"OTEL_METRICS_EXPORTER": "none,otlp"})


def test_metrics_protocol_wins_over_general_protocol() -> None:
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"}
    assert load_settings(env).otlp_protocol == "http/protobuf"
    assert load_settings({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}).otlp_protocol == "http/protobuf"


def test_auto_source_picks_kubernetes_when_kubeconfig_is_set(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    settings = load_settings({"KUBECONFIG": str(kubeconfig)})
    assert settings.source == "kubernetes"
    assert settings.libvirt_uri == (
        "qemu+unix:///{mode}?socket={pods_root}/{pod_uid}"
        "/volumes/kubernetes.io~empty-dir/libvirt-runtime/virtqemud-sock"
    )


def test_explicit_kubernetes_source_without_any_cluster_config_is_explained(tmp_path: Path) -> None:
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp_path)  # no ~/.kube/config there
    try:
        with pytest.raises(ConfigError, match="OTEL_VMI_HV_SOURCE='kubernetes' cannot be used"):
            load_settings({"OTEL_VMI_HV_SOURCE": "kubernetes"})
    finally:
        if old_home is not None:
            os.environ["HOME"] = old_home


def test_uri_placeholders_need_the_kubernetes_source() -> None:
    with pytest.raises(ConfigError, match="only the kubernetes source fills"):
        load_settings({"OTEL_VMI_HV_SOURCE": "libvirt", "OTEL_VMI_HV_LIBVIRT_URI": "qemu+unix:///{mode}"})


def test_export_timeout_follows_a_short_interval_unless_set() -> None:
    assert load_settings({"OTEL_METRIC_EXPORT_INTERVAL": "1000"}).export_timeout_ms == 1000
    with pytest.raises(ConfigError, match="must not exceed the interval"):
        load_settings({"OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_METRIC_EXPORT_TIMEOUT": "5000"})


@pytest.mark.parametrize(
    ("text", "seconds"), [("5s", 5.0), ("500ms", 0.5), ("2m", 120.0), ("1.5", 1.5), ("1h", 3600.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "otel_vmi_hv", *args], env=clean, capture_output=True, text=True, timeout=60
    )


def test_cli_bad_env_exits_2_with_one_line() -> None:
    result = _cli("check-config", env={"OTEL_VMI_HV_LIBVIRT_TIMEOUT": "forever"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "OTEL_VMI_HV_LIBVIRT_TIMEOUT='forever'" in lines[0]
    assert "duration" in lines[0]


def test_cli_run_with_bad_env_exits_2_before_starting() -> None:
    result = _cli("run", env={"OTEL_EXPORTER_PROMETHEUS_PORT": "http"})
    assert result.returncode == 2
    assert "OTEL_EXPORTER_PROMETHEUS_PORT" in result.stderr


def test_check_config_prints_effective_values_and_never_header_values() -> None:
    result = _cli(
        "check-config",
        "--node-name",
        "worker-9",
        env={"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cr3t", "OTEL_VMI_HV_SOURCE": "libvirt"},
    )
    assert result.returncode == 0, result.stderr
    assert "worker-9" in result.stdout
    assert "(flag)" in result.stdout
    assert "s3cr3t" not in result.stdout + result.stderr


def test_proc_root_must_be_an_absolute_existing_directory(tmp_path: Path) -> None:
    settings = load_settings({"NODE_NAME": "w", "OTEL_VMI_HV_PROC_ROOT": str(tmp_path)})
    assert settings.proc_root == str(tmp_path)
    a_file = tmp_path / "file"
    a_file.write_text("")
    for bad in (str(a_file), "proc", str(tmp_path / "absent")):
        with pytest.raises(ConfigError, match="OTEL_VMI_HV_PROC_ROOT") as raised:
            load_settings({"OTEL_VMI_HV_PROC_ROOT": bad})
        assert bad in str(raised.value)


def _sdk_variables() -> set[str]:
    """Every OTEL_* name the installed OpenTelemetry API and SDK define."""
    import opentelemetry.environment_variables as api_variables
    import opentelemetry.sdk.environment_variables as sdk_variables

    return {
        value
        for module in (api_variables, sdk_variables)
        for name, value in vars(module).items()
        if name.lstrip("_").startswith("OTEL_") and isinstance(value, str)
    }


def test_every_sdk_variable_is_validated_or_known_to_be_unread() -> None:
    unaccounted = _sdk_variables() - set(OPTION_BY_ENV) - NOT_READ_BY_THE_AGENT
    assert not unaccounted, (
        f"validate these in config.OPTIONS or list them as not read: {sorted(unaccounted)}"
    )
    assert not set(OPTION_BY_ENV) & NOT_READ_BY_THE_AGENT


@pytest.mark.parametrize(
    "value", ["a=b%0Ac", "a=b\nc", "a=b%0D%0Ax-injected: 1", "a=\x7f", "bad name=1", "a%0A=1"]
)
def test_header_values_with_control_characters_are_refused_unshown(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"OTEL_EXPORTER_OTLP_HEADERS": value})
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(raised.value)
    assert "value not shown" in str(raised.value)


def test_compression_the_grpc_exporter_refuses_is_refused_for_grpc_only() -> None:
    for variable in ("OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION"):
        for value in ("none", "deflate"):
            with pytest.raises(ConfigError, match=f"{variable}='{value}' cannot be used with the grpc"):
                load_settings({variable: value, "OTEL_VMI_HV_NODE_NAME": "n"})
            settings = load_settings({variable: value, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
            assert settings.otlp_protocol == "http/protobuf"


BOTH_PROTOCOLS = ("grpc", "http/protobuf")
# Values the agent accepts, with the protocols it accepts them for: deflate and none exist only for
# http/protobuf (refused for grpc: test_compression_the_grpc_exporter_refuses_is_refused_for_grpc_only).
ACCEPTED_BY_THE_AGENT: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "OTEL_EXPORTER_OTLP_COMPRESSION": [
        ("gzip", BOTH_PROTOCOLS), ("GZIP", BOTH_PROTOCOLS), ("deflate", ("http/protobuf",)),
        ("none", ("http/protobuf",)),
    ],
    "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": [
        ("gzip", BOTH_PROTOCOLS), ("deflate", ("http/protobuf",)), ("none", ("http/protobuf",)),
    ],
    "OTEL_EXPORTER_OTLP_TIMEOUT": [("1", BOTH_PROTOCOLS), ("2.5", BOTH_PROTOCOLS)],
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": [("0.5", BOTH_PROTOCOLS), ("30", BOTH_PROTOCOLS)],
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": [
        ("delta", BOTH_PROTOCOLS), ("LOWMEMORY", BOTH_PROTOCOLS), ("cumulative", BOTH_PROTOCOLS),
    ],
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": [
        ("base2_exponential_bucket_histogram", BOTH_PROTOCOLS),
    ],
    "OTEL_EXPORTER_OTLP_INSECURE": [("true", BOTH_PROTOCOLS), ("FALSE", BOTH_PROTOCOLS)],
    "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES": [
        ("UNAVAILABLE,resource_exhausted", BOTH_PROTOCOLS),
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "variable", "value"),
    [
        (protocol, variable, value)
        for variable, accepted in sorted(ACCEPTED_BY_THE_AGENT.items())
        for value, protocols in accepted
        for protocol in protocols
    ],
)
def test_what_the_agent_accepts_the_sdk_exporters_accept(
    protocol: str, variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation and the SDK agree: a value the agent accepts must not make the exporter raise."""
    env = {variable: value, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_VMI_HV_NODE_NAME": "n"}
    load_settings(env)  # a ConfigError here fails the test: the value is listed as accepted
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(variable, value)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
    OTLPMetricExporter().shutdown()


def test_a_readable_pem_file_is_accepted_where_a_file_is_expected(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_settings({"OTEL_EXPORTER_OTLP_CERTIFICATE": str(pem), "OTEL_VMI_HV_NODE_NAME": "n"})
    assert settings.node_name == "n"


def test_empty_otel_variables_are_removed_before_the_sdk() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_TIMEOUT": "",
        "OTEL_EXPORTER_OTLP_COMPRESSION": " ",
        "OTEL_SERVICE_NAME": "kept",
        "OTHER": "",
    }
    assert sorted(unset_empty_variables(environ)) == [
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    assert environ == {"OTEL_SERVICE_NAME": "kept", "OTHER": ""}
