"""pytest fixtures starting the real peers; load with ``pytest_plugins = ["tests.harness.fixtures"]``.

The fake API server of tests/fakes is one of them (``api``), so that every tier starts it the
same way. Every fixture tears its peer down in a finalizer, so a failing (or erroring) test still leaves
nothing running. Behind the finalizers there are two more nets for runs that die hard (SIGKILL,
CI timeout): Prometheus and rotel get PR_SET_PDEATHSIG, and the libvirtd supervisor kills libvirtd
and every QEMU of its folder when the test process's end of its stdin pipe closes.

Missing peers go through ``tests.peers.require``: outside CI the test is skipped with the reason;
with ``CI=true`` the hook in tests/conftest.py makes that skip a failure, because a CI run that
silently skips the real-peer tests proves nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from tests.peers import require

# The peers' modules are imported inside the fixtures that start them, so that loading this
# plugin (which every test run does, through tests/conftest.py) imports neither libvirt nor the
# daemon harness: unit tests must run where only the package's own dependencies are installed.
if TYPE_CHECKING:
    from tests.fakes.kube_apiserver import FakeKubeAPIServer
    from tests.harness import libvirtd as lv
    from tests.harness import prometheus as prom
    from tests.harness.otlp_receiver import RotelReceiver


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[lv.LibvirtDaemon]:
    """A session-mode libvirtd shared by the whole run (starting one costs ~40 ms).

    Tests using it must leave it running and not paused, and should give their domains unique
    names and undefine them. Tests that kill, stop, restart or pause a daemon use
    ``libvirtd_factory`` so they cannot break their neighbours.
    """
    from tests.harness import libvirtd as lv

    require("libvirtd")
    daemon = lv.LibvirtDaemon.launch()
    try:
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture(autouse=True)
def _heal_shared_libvirtd(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the shared ``libvirtd``, put it back running and unpaused.

    A test that forgot ``resume_daemon()`` (or failed before it) would otherwise make every later
    test hang or fail for a reason that is not theirs. No-op for tests not using ``libvirtd``.
    """
    yield
    if "libvirtd" not in request.fixturenames:
        return
    daemon: lv.LibvirtDaemon = request.getfixturevalue("libvirtd")
    if daemon.paused:
        daemon.resume_daemon()
    if daemon.pid is None:
        daemon.restart()


@pytest.fixture
def libvirtd_factory() -> Iterator[Callable[[], lv.LibvirtDaemon]]:
    """Return a function that starts a private session daemon; all are cleaned up after the test."""
    from tests.harness import libvirtd as lv

    require("libvirtd")
    daemons: list[lv.LibvirtDaemon] = []

    def make() -> lv.LibvirtDaemon:
        daemon = lv.LibvirtDaemon.launch()
        daemons.append(daemon)
        return daemon

    try:
        yield make
    finally:
        _cleanup_all(d.cleanup for d in daemons)


@pytest.fixture(scope="session")
def system_libvirtd() -> Iterator[lv.SystemLibvirtDaemon]:
    """A system-mode libvirtd (root, private mount namespace) able to run ``type='kvm'`` domains.

    Needs root and a /dev/kvm that can create a VM (missing peers: tests/peers.py).
    """
    from tests.harness import libvirtd as lv

    require("system-libvirtd")
    require("kvm")
    daemon = lv.SystemLibvirtDaemon.launch()
    try:
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def prometheus_factory() -> Iterator[Callable[..., prom.PrometheusServer]]:
    """Return ``make(targets, **kwargs) -> started PrometheusServer``; all are stopped after the test.

    ``kwargs`` go to ``PrometheusServer`` (``scrape_interval``, ``extra_scrape_configs``, ``job``).
    """
    from tests.harness import prometheus as prom

    require("prometheus")
    servers: list[prom.PrometheusServer] = []

    def make(targets: Sequence[str] = (), **kwargs: Any) -> prom.PrometheusServer:
        server = prom.PrometheusServer(targets, **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        _cleanup_all(s.stop for s in servers)


@pytest.fixture
def otlp_receiver() -> Iterator[RotelReceiver]:
    """A started rotel OTLP receiver (gRPC + HTTP on 127.0.0.1), stopped after the test."""
    from tests.harness.otlp_receiver import RotelReceiver

    receiver = RotelReceiver(require("rotel"))
    try:
        receiver.start()
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def fake_api_options() -> dict[str, Any]:
    """The ``FakeKubeAPIServer`` arguments of the ``api`` fixture in this directory: the fake's own
    defaults here; a tier's conftest.py overrides this fixture to change them for the whole tier."""
    return {}


@pytest.fixture
def api(request: pytest.FixtureRequest, fake_api_options: dict[str, Any]) -> Iterator[FakeKubeAPIServer]:
    """The fake Kubernetes API server (tests/fakes/kube_apiserver.py), started for one test.

    Its arguments are ``fake_api_options`` updated by the closest ``@pytest.mark.fake_api(**kwargs)``
    (on the test, or a module's ``pytestmark``), for the tests that need another pace or history.
    """
    from tests.fakes.kube_apiserver import FakeKubeAPIServer

    marker = request.node.get_closest_marker("fake_api")
    options = {**fake_api_options, **(marker.kwargs if marker else {})}
    with FakeKubeAPIServer(**options) as server:
        yield server


def _cleanup_all(actions: Iterable[Callable[[], None]]) -> None:
    """Run every cleanup even if some fail, then re-raise the first failure."""
    errors: list[BaseException] = []
    for action in actions:
        try:
            action()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
