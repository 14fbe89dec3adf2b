# otel-vmi-hv agent image.
#
#   docker build -t otel-vmi-hv .
#   docker run --rm -p 9464:9464 -e OTEL_METRICS_EXPORTER=prometheus otel-vmi-hv
#
# By default it runs the embedded demo node (libvirt's in-process test driver on
# config/demo-node.xml), so it works anywhere. On a KubeVirt node the DaemonSet overrides the
# OTEL_VMI_HV_* settings; on a plain libvirt host see the socket variant in docker-compose.yml.
#
# Two stages: the builder compiles the libvirt-python extension (no prebuilt wheels exist) and turns
# the project and every dependency into wheels; the runtime image installs those wheels offline and
# carries only the libvirt client library, no compiler or headers.

# Debian release pinned (bookworm) so the apt package names and the libvirt version (9.0) are
# known; libvirt-python builds against whatever libvirt headers it finds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# gcc + libc6-dev: compiler and C headers for the extension; libvirt-dev + pkg-config: libvirt
# headers and the .pc file libvirt-python's build looks up.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libvirt-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Reproducible: every dependency is the exact version of requirements.lock, checked against its
# hashes (--require-hashes), so two builds on different days get the same packages. Only
# libvirt-python is compiled here (from its hash-checked source archive). The project's own wheel
# is built without resolving anything again (--no-deps).
COPY requirements.lock ./
RUN pip wheel --require-hashes --wheel-dir /wheels -r requirements.lock
# Only what building the project needs (pyproject.toml names README.md as the long description).
COPY pyproject.toml README.md ./
COPY otel_vmi_hv/ ./otel_vmi_hv/
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && cd /wheels && sha256sum -- *.whl > /wheels.sha256

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="otel-vmi-hv" \
      org.opencontainers.image.description="Reports per KubeVirt VMI whether it runs with KVM or QEMU TCG emulation (kubevirt_vmi_hypervisor_info)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# libvirt0: the client library libvirt-python links against. It contains the remote driver
# (qemu+unix sockets) and the in-process test driver; no daemon is installed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvirt0 \
    && rm -rf /var/lib/apt/lists/*
# The list of the wheels installed below, with their hashes: a record of exactly what the image
# holds, and the reason the next step is rebuilt whenever a wheel changed (podman's layer cache does
# not look into a bind mount's content, and would otherwise keep a stale install of the agent).
COPY --from=builder /wheels.sha256 /opt/otel-vmi-hv/wheels.sha256
# Install exactly those wheels (--no-index --no-deps: nothing is fetched or resolved here; their
# versions and hashes were checked in the builder), then let pip confirm the set is complete and
# consistent. The bind mount keeps the wheels out of the image layers.
# The kubernetes client ships a second, asyncio copy of itself (kubernetes/aio: 68 MB with its .pyc,
# half the client) that nothing imports unless asked for by name; the agent never does, so it is
# removed in the same layer (tests/image checks that the agent lists VMIs without it).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    cd /wheels && sha256sum --check --quiet /opt/otel-vmi-hv/wheels.sha256 \
    && pip install --no-index --no-deps /wheels/*.whl \
    && pip check \
    && rm -r "$(python -c 'import importlib.util as u; print(u.find_spec("kubernetes").submodule_search_locations[0])')/aio"

# Unprivileged by default (65532, the usual "nonroot" id). The demo and libvirt's read-only socket
# (mode 0777 by default) need nothing more. On a KubeVirt node the agent must run as root (set in the
# DaemonSet's securityContext), because the launcher sockets under /var/lib/kubelet/pods are not
# reachable for other users.
RUN groupadd --system --gid 65532 otel-vmi-hv \
    && useradd --system --uid 65532 --gid 65532 --create-home --home-dir /home/otel-vmi-hv \
       --shell /usr/sbin/nologin otel-vmi-hv

# The demo node: a libvirt test-driver definition with several KubeVirt-named domains of different
# types. OTEL_VMI_HV_LIBVIRT_URI below must keep pointing at this path.
COPY config/demo-node.xml /opt/otel-vmi-hv/config/demo-node.xml

ENV OTEL_VMI_HV_SOURCE=libvirt \
    OTEL_VMI_HV_LIBVIRT_URI=test:///opt/otel-vmi-hv/config/demo-node.xml

USER 65532:65532
WORKDIR /home/otel-vmi-hv
# /metrics, /healthz, /readyz (OTEL_EXPORTER_PROMETHEUS_PORT).
EXPOSE 9464

# /healthz answers while the process is alive. The slim image has no curl, so Python does the GET;
# urlopen raises (exit status 1) on a refused connection, a timeout or a non-2xx answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('OTEL_EXPORTER_PROMETHEUS_PORT', '9464') + '/healthz', timeout=4)"]

ENTRYPOINT ["otel-vmi-hv"]
CMD ["run"]
