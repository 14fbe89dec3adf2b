"""The generic list-watch loop against the fake API server: what it costs the server, and how it
recovers from restarts, silent watches, oversized lines, broken streams and bugs in its handler."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.interfaces import Recorder
from otel_vmi_hv.sources.kubernetes import api_client_for
from otel_vmi_hv.sources.list_watch import ListWatch, ListWatchOptions, Resource
from tests.agent_process import wait_until
from tests.fakes.kube_apiserver import CACHED_LIST, CONSISTENT_LIST, WATCH, FakeKubeAPIServer
from tests.fakes.kubevirt_objects import NODE, make_kubevirt, make_node, make_vmi
from tests.integration.kube_env import Launchers, agent_settings, running_agent, series

NODES = Resource("nodes")
KUBEVIRTS = Resource("kubevirts", "kubevirt.io", "v1")
OPTIONS = ListWatchOptions(relist_spread=0.0, silence_timeout=30.0)


class Kept:
    """A ListWatchHandler keeping what it was told, by object name; the methods in ``broken`` raise."""

    def __init__(self) -> None:
        self.objects: dict[str, Mapping[str, Any]] = {}
        self._listing: dict[str, Mapping[str, Any]] = {}
        self.relists = 0
        self.events: list[tuple[str, str]] = []
        self.failures: list[tuple[int | None, str]] = []
        self.broken: set[str] = set()

    @staticmethod
    def _name(obj: Mapping[str, Any]) -> str:
        return f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"

    def relist_started(self) -> None:
        self._listing = {}

    def listed(self, obj: Mapping[str, Any]) -> None:
        if "listed" in self.broken:
            raise TypeError("a bug in the handler")
        self._listing[self._name(obj)] = obj

    def relist_done(self) -> None:
        self.objects, self._listing = self._listing, {}
        self.relists += 1

    def changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        if "changed" in self.broken:
            raise KeyError("a bug in the handler")
        self.events.append((event_type, self._name(obj)))
        if event_type == "DELETED":
            self.objects.pop(self._name(obj), None)
        else:
            self.objects[self._name(obj)] = obj

    def watching(self) -> None:
        pass

    def failed(self, status: int | None, reason: str) -> None:
        self.failures.append((status, reason))


class Counts(Recorder):
    """The loop's records: watch restarts by reason, relists, handler errors."""

    def __init__(self) -> None:
        self.restarts: list[str] = []
        self.relists = 0
        self.handler_errors = 0

    def record_watch_restart(self, reason: str) -> None:
        self.restarts.append(reason)

    def record_relist(self) -> None:
        self.relists += 1

    def record_handler_error(self) -> None:
        self.handler_errors += 1


@dataclass(frozen=True)
class Recorded(Backoff):
    """The real backoff, remembering the attempt numbers it was asked about and the delays it gave."""

    asked: list[tuple[int, float]] = field(default_factory=list)

    def delay(self, failures: int) -> float:
        wait = super().delay(failures)
        self.asked.append((failures, wait))
        return wait


def restart_with_changes(api: FakeKubeAPIServer) -> None:
    """The API server goes down, the cluster moves on (etcd's revision grows), the server comes back
    with a fresh watch cache: resuming from any version seen before gets 410."""
    api.stop()
    api.create(make_node(f"other-{api.resource_version}", "1k"))
    api.restart()


class Running:
    def __init__(
        self, api: FakeKubeAPIServer, tmp_path: Path, resource: Resource, options: ListWatchOptions
    ) -> None:
        from kubernetes import config

        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        client = config.new_client_from_config(config_file=str(kubeconfig))
        self.handler = Kept()
        self.counts = Counts()
        self.watch = ListWatch(resource, self.handler, lambda: client, options, self.counts)

    @property
    def restarts(self) -> list[str]:
        return self.counts.restarts

    def __enter__(self) -> Running:
        self.watch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watch.stop()


def test_first_list_and_relists_come_from_the_watch_cache(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    api.create(make_node(NODE, "1k"))
    options = replace(OPTIONS, field_selector=f"metadata.name={NODE}")
    with Running(api, tmp_path, NODES, options) as running:
        api.wait_for_watches(1)
        first = [r for r in api.requests if r.verb == "list"]
        assert len(first) == 1 and first[0].params.get("resourceVersion") == "0"
        last_seen = api.resource_version
        restart_with_changes(api)
        wait_until(lambda: running.handler.relists == 2, 10, "a relist after the restart")
        relist = [r for r in api.requests if r.verb == "list"][-1]
        assert relist.params.get("resourceVersionMatch") == "NotOlderThan"
        assert int(relist.params["resourceVersion"]) >= int(last_seen or 0)
        assert "limit" not in relist.params, "a limit would send a non-zero resourceVersion to etcd"
    kinds = api.request_kinds("nodes")
    assert kinds.get(CONSISTENT_LIST, 0) == 0, kinds
    assert kinds[CACHED_LIST] == 2 and kinds[WATCH] >= 2


def test_the_agent_never_reads_etcd_for_its_vmis(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    vmi = make_vmi("ops", "web", NODE)
    Launchers(pods).run_vmi(vmi, "kvm", NODE)
    api.create(vmi)
    with running_agent(api, tmp_path, NODE, pods) as agent:
        wait_until(lambda: series(agent) == {("ops", "web"): "kvm"}, 10, "the VMI")
        api.wait_for_watches(1)
        api.stop()
        api.delete("ops", "web")
        api.restart()
        wait_until(lambda: series(agent) == {}, 10, "the relist after the restart")
    kinds = api.request_kinds("virtualmachineinstances")
    assert kinds.get(CONSISTENT_LIST, 0) == 0 and kinds[CACHED_LIST] >= 2, kinds


@pytest.mark.parametrize("metadata_last", [False, True], ids=["metadata-first", "metadata-last"])
def test_pages_where_the_server_has_no_watch_cache(tmp_path: Path, metadata_last: bool) -> None:
    """Each page's continue token is found wherever the server writes the list's metadata."""
    with FakeKubeAPIServer(bookmark_interval=0.2, watch_cache=False, list_metadata_last=metadata_last) as api:
        for index in range(5):
            cr = make_kubevirt(True)
            cr["metadata"]["namespace"] = f"ns-{index}"
            api.create(cr)
        options = replace(OPTIONS, page_size=2)
        with Running(api, tmp_path, KUBEVIRTS, options) as running:
            wait_until(lambda: running.handler.relists == 1, 10, "the first listing")
            assert len(running.handler.objects) == 5
            api.wait_for_watches(1)
            restart_with_changes(api)
            wait_until(lambda: running.handler.relists == 2, 10, "the relist")
        lists = [r for r in api.requests if r.verb == "list"]
        assert len(lists) == 6, "three pages, twice"
        assert all(r.params.get("limit") == "2" for r in lists), "paginated, since the server paginates"


def test_the_watch_cache_ignores_limit(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    for index in range(5):
        cr = make_kubevirt(True)
        cr["metadata"]["namespace"] = f"ns-{index}"
        api.create(cr)
    with Running(api, tmp_path, KUBEVIRTS, replace(OPTIONS, page_size=2)) as running:
        wait_until(lambda: running.handler.relists == 1, 10, "the first listing")
    assert len(running.handler.objects) == 5
    assert api.request_count("list") == 1


def test_a_silent_watch_is_resumed(tmp_path: Path) -> None:
    with FakeKubeAPIServer(bookmark_interval=3600) as api:  # no bookmark, no event: silence
        api.create(make_node(NODE, "1k"))
        options = replace(OPTIONS, silence_timeout=0.3)
        with Running(api, tmp_path, NODES, options) as running:
            wait_until(lambda: running.restarts.count("silent") >= 2, 10, "silent watches ended")
            api.patch(
                "", NODE, lambda node: node["metadata"].setdefault("labels", {}).update(x="y"), kind="Node"
            )
            wait_until(
                lambda: ("MODIFIED", f"/{NODE}") in running.handler.events, 10, "the resumed watch works"
            )
        assert api.list_requests == 1, "resumed from the last version, not relisted"


def test_an_oversized_watch_line_restarts_the_watch(
    api: FakeKubeAPIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.create(make_node(NODE, "1k"))
    options = replace(OPTIONS, max_line_bytes=64 * 1024)
    caplog.set_level(logging.WARNING)
    with Running(api, tmp_path, NODES, options) as running:
        api.wait_for_watches(1)
        watches = api.watch_requests
        huge = make_node("worker-huge", "1k")
        huge["metadata"]["annotations"]["blob"] = "x" * (256 * 1024)
        api.create(huge)
        wait_until(lambda: api.watch_requests > watches, 10, "a new watch after the oversized line")
        api.create(make_node("worker-2", "1k"))
        assert "error" in running.restarts
    assert any("watch line" in record.getMessage() for record in caplog.records)


def test_stop_ends_an_open_watch_at_once(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    running = Running(api, tmp_path, NODES, OPTIONS)
    thread_name = f"watch-stop-test-{uuid.uuid4().hex[:8]}"
    running.watch.start(thread_name)
    api.wait_for_watches(1)
    assert thread_name in _thread_names()
    running.watch.stop()
    wait_until(lambda: thread_name not in _thread_names(), 2, "the watch thread ended")


def _thread_names() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


def test_relists_after_an_outage_wait_their_spread(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    api.create(make_node(NODE, "1k"))
    options = replace(OPTIONS, relist_spread=36_000.0)
    with Running(api, tmp_path, NODES, options) as running:
        wait_until(lambda: running.counts.relists == 1, 10, "the first list, not delayed")
        api.wait_for_watches(1)
        watches = api.watch_requests
        restart_with_changes(api)
        wait_until(lambda: "expired" in running.restarts, 10, "the 410 after the restart")
        assert api.watch_requests > watches
        with pytest.raises(AssertionError):  # the relist waits a random part of 10 hours, not 0 s
            wait_until(lambda: running.counts.relists > 1, 1.0, "a relist")
    assert api.list_requests == 1


def test_a_stream_that_delivered_starts_the_failure_count_again(
    api: FakeKubeAPIServer, tmp_path: Path
) -> None:
    """Thirty healthy streams each cut after an event: every retry waits the first delay, not the cap."""
    backoff = Recorded(initial=0.01, maximum=600.0, jitter=0.0)
    with Running(api, tmp_path, NODES, replace(OPTIONS, backoff=backoff)) as running:
        for index in range(30):
            api.wait_for_watches(1)
            api.create(make_node(f"worker-{index}", "1k"))
            wait_until(lambda: len(running.handler.events) > index, 10, f"event {index}")  # noqa: B023
            api.drop_streams()
            wait_until(lambda: len(backoff.asked) > index, 10, f"the retry after break {index}")  # noqa: B023
        assert backoff.asked == [(1, 0.01)] * 30
        assert len(running.handler.failures) == 30 and running.handler.relists == 1


def test_a_refused_connection_is_retried_by_the_loop_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The client the agent builds does not retry under the loop's backoff (urllib3 would, thrice,
    with a WARNING each)."""
    with FakeKubeAPIServer() as stopped:
        settings = agent_settings(stopped.write_kubeconfig(tmp_path / "kubeconfig"), NODE, tmp_path)
        stopped.stop()
        client = api_client_for(settings)
        caplog.set_level(logging.DEBUG, logger="urllib3")
        handler = Kept()
        watch = ListWatch(NODES, handler, lambda: client, replace(OPTIONS, backoff=Backoff(0.05, 0.05)))
        watch.start()
        try:
            wait_until(lambda: len(handler.failures) >= 3, 10, "three failed lists")
        finally:
            watch.stop()
    assert handler.failures[0][0] is None and "Connection refused" in handler.failures[0][1]
    assert not [
        r.getMessage() for r in caplog.records if r.name.startswith("urllib3") and "Retry" in r.getMessage()
    ]


def test_a_bug_in_the_handler_is_logged_counted_and_relisted_with_a_growing_backoff(
    api: FakeKubeAPIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backoff = Recorded(initial=0.01, maximum=600.0, jitter=0.0)
    caplog.set_level(logging.ERROR, logger="otel_vmi_hv.sources.list_watch")
    with Running(api, tmp_path, NODES, replace(OPTIONS, backoff=backoff)) as running:
        wait_until(lambda: running.handler.relists == 1, 10, "the first listing")
        running.handler.broken = {"changed"}
        for index in range(3):
            api.wait_for_watches(1)
            api.create(make_node(f"worker-{index}", "1k"))
            wait_until(lambda: running.counts.handler_errors > index, 10, f"bug {index}")  # noqa: B023
            wait_until(lambda: running.handler.relists == index + 2, 10, f"the relist after bug {index}")  # noqa: B023
        assert [failures for failures, _ in backoff.asked] == [1, 2, 3], "a relist that works hides no bug"
        assert all("bug in the nodes handler: KeyError" in why for _, why in running.handler.failures)
        bugs = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(bugs) == 3 and all(r.exc_info for r in bugs), "each with its traceback"
        assert set(running.handler.objects) == {"/worker-0", "/worker-1", "/worker-2"}, "relists caught up"
        running.handler.broken = set()
        api.wait_for_watches(1)
        api.create(make_node("worker-fixed", "1k"))
        wait_until(lambda: ("ADDED", "/worker-fixed") in running.handler.events, 10, "events flow again")


def test_a_bug_while_listing_is_the_loops_last_error(api: FakeKubeAPIServer, tmp_path: Path) -> None:
    """What `detect` prints when the first listing cannot complete; retried with a growing backoff."""
    api.create(make_node(NODE, "1k"))
    backoff = Recorded(initial=0.01, maximum=600.0, jitter=0.0)
    running = Running(api, tmp_path, NODES, replace(OPTIONS, backoff=backoff))
    running.handler.broken = {"listed"}
    with running:
        wait_until(lambda: len(backoff.asked) >= 3, 10, "three failed listings")
        assert "bug in the nodes handler: TypeError" in (running.watch.last_error or "")
        assert [failures for failures, _ in backoff.asked[:3]] == [1, 2, 3]
        assert running.counts.handler_errors >= 3 and running.handler.relists == 0
