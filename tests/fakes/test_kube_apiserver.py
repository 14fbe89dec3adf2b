"""Prove the fake API server is faithful, through the real ``kubernetes`` client over real HTTP.

Every test configures the client from the kubeconfig the fake writes, exactly as the agent will, so what is
verified here is the wire protocol as the client library sees it, not the fake's Python API.  Waiting is
always bounded (queues with timeouts, ``FakeKubeAPIServer.wait_for``); nothing sleeps.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.fakes import kubevirt_objects as ko
from tests.fakes.kube_apiserver import (
    CONTINUE_EXPIRED_MESSAGE,
    INITIAL_EVENTS_END_ANNOTATION,
    FakeKubeAPIServer,
    FieldSelector,
    LabelSelector,
    SelectorError,
)

GROUP, VERSION, PLURAL = "kubevirt.io", "v1", "virtualmachineinstances"
NODE = ko.NODE_NAME_LABEL
TIMEOUT = 5.0


# ------------------------------------------------------------------------------------------ helpers


def api_client_for(
    fake: FakeKubeAPIServer, path: Path, token: str | None = None, *, retries: Any = None
) -> client.ApiClient:
    """A client configured from a kubeconfig written by the fake, the way the agent loads one."""
    kubeconfig = fake.write_kubeconfig(path, token=token)
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    if retries is not None:
        cfg.retries = retries
    return client.ApiClient(cfg)


def names(items: list[dict[str, Any]]) -> list[str]:
    return [item["metadata"]["name"] for item in items]


def list_vmis(api: client.CustomObjectsApi, namespace: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """List VMIs; the client types custom-object results as ``object``, they are JSON dicts."""
    if namespace is None:
        result = api.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs)
    else:
        result = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)
    assert isinstance(result, dict)
    return result


def status_body(exc: ApiException) -> dict[str, Any]:
    """The ``kind: Status`` body of an HTTP error, decoded."""
    assert exc.body is not None
    body = json.loads(exc.body)
    assert isinstance(body, dict)
    assert body["kind"] == "Status"
    return body


_END = object()


class StreamRecorder:
    """Runs ``kubernetes.watch.Watch().stream(...)`` in a thread and queues what it yields or raises."""

    def __init__(self, api: client.CustomObjectsApi, **kwargs: Any) -> None:
        self.watch = watch.Watch()
        self.items: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(api, kwargs), daemon=True)
        self._thread.start()

    def _run(self, api: client.CustomObjectsApi, kwargs: dict[str, Any]) -> None:
        try:
            for event in self.watch.stream(api.list_cluster_custom_object, GROUP, VERSION, PLURAL, **kwargs):
                self.items.put(event)
            self.items.put(_END)
        except BaseException as exc:  # handed to the test thread for assertions
            self.items.put(exc)

    def next(self, timeout: float = TIMEOUT) -> Any:
        return self.items.get(timeout=timeout)

    def events(self, count: int, *, bookmarks: bool = False) -> list[dict[str, Any]]:
        """The next ``count`` events (BOOKMARKs skipped unless asked for); fail on end or error."""
        got: list[dict[str, Any]] = []
        while len(got) < count:
            item = self.next()
            assert isinstance(item, dict), f"stream ended early with {item!r} after {got!r}"
            if bookmarks or item["type"] != "BOOKMARK":
                got.append(item)
        return got

    def outcome(self) -> Any:
        """Skip events until the stream ends; return ``_END`` or the exception it raised."""
        while True:
            item = self.next()
            if not isinstance(item, dict):
                return item

    def stop(self) -> None:
        self.watch.stop()
        self._thread.join(timeout=TIMEOUT)


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"]["name"]) for e in events]


def vmi(name: str, node: str | None = "node-a", namespace: str = "default", **labels: str) -> dict[str, Any]:
    obj = ko.make_vmi(namespace, name, node)
    obj["metadata"]["labels"].update(labels)
    return obj


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def fake() -> Iterator[FakeKubeAPIServer]:
    with FakeKubeAPIServer(bookmark_interval=3600, too_large_rv_wait=0.1) as server:
        yield server


@pytest.fixture
def api_client(fake: FakeKubeAPIServer, tmp_path: Path) -> Iterator[client.ApiClient]:
    api_client = api_client_for(fake, tmp_path / "kubeconfig")
    yield api_client
    api_client.close()


@pytest.fixture
def api(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def recorders() -> Iterator[list[StreamRecorder]]:
    started: list[StreamRecorder] = []
    yield started
    for recorder in started:
        recorder.stop()


# ---------------------------------------------------------------------------------------- selectors


def _populate_for_selectors(fake: FakeKubeAPIServer) -> None:
    fake.create(vmi("vm-a", "node-a", env="prod", tier="web"))
    fake.create(vmi("vm-b", "node-b", env="dev", tier="web"))
    fake.create(vmi("vm-c", "node-a", env="staging"))
    fake.create(vmi("vm-d", "node-c", namespace="other"))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", ["vm-a", "vm-b", "vm-c", "vm-d"]),
        (f"{NODE}=node-a", ["vm-a", "vm-c"]),
        (f"{NODE}==node-a", ["vm-a", "vm-c"]),
        (f"{NODE}!=node-a", ["vm-b", "vm-d"]),
        ("env in (prod,dev)", ["vm-a", "vm-b"]),
        ("env notin (prod)", ["vm-b", "vm-c", "vm-d"]),  # absent label matches notin, as on a real server
        ("tier", ["vm-a", "vm-b"]),
        ("!tier", ["vm-c", "vm-d"]),
        (f"{NODE}=node-a,tier", ["vm-a"]),
        (" env != dev , !tier ", ["vm-c", "vm-d"]),
        ("env in (prod, staging),tier notin (web)", ["vm-c"]),
    ],
)
def test_list_label_selectors(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi, selector: str, expected: list[str]
) -> None:
    _populate_for_selectors(fake)
    result = list_vmis(api, label_selector=selector)
    assert sorted(names(result["items"])) == expected
    assert result["kind"] == "VirtualMachineInstanceList"
    assert result["apiVersion"] == "kubevirt.io/v1"
    assert result["metadata"]["resourceVersion"] == fake.resource_version
    # The request log keeps the raw (percent-encoded) query and the decoded parameters.
    assert fake.queries("list")[-1].startswith("labelSelector=")
    assert fake.requests[-1].params["labelSelector"] == selector


def test_field_selectors_and_namespaced_list(fake: FakeKubeAPIServer, api: client.CustomObjectsApi) -> None:
    _populate_for_selectors(fake)
    assert names(list_vmis(api, field_selector="metadata.name=vm-b")["items"]) == ["vm-b"]
    assert names(list_vmis(api, field_selector="metadata.namespace!=default")["items"]) == ["vm-d"]
    assert names(list_vmis(api, "default", label_selector="tier")["items"]) == ["vm-a", "vm-b"]
    assert names(list_vmis(api, "other")["items"]) == ["vm-d"]
    assert names(list_vmis(api, "default", field_selector="metadata.namespace=other")["items"]) == []


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("label_selector", "env in ()", "values set can't be empty"),
        ("label_selector", "env prod", "expected"),
        ("label_selector", "tier,", "identifier after ','"),
        ("label_selector", "env=bad value!", "expected"),
        ("field_selector", "status.nodeName=node-a", "field label not supported: status.nodeName"),
    ],
)
def test_invalid_selectors_are_rejected_with_400(
    api: client.CustomObjectsApi, param: str, value: str, message: str
) -> None:
    with pytest.raises(ApiException) as info:
        list_vmis(api, **{param: value})
    assert info.value.status == 400
    body = status_body(info.value)
    assert body["kind"] == "Status"
    assert body["reason"] == "BadRequest"
    assert message in body["message"]


def test_selector_parser_semantics() -> None:
    labels = {"a": "1", "b": "x", "k8s.io/c": "5"}
    assert LabelSelector.parse("a in (1,2),b").matches(labels)
    assert LabelSelector.parse("k8s.io/c>4,k8s.io/c<6").matches(labels)
    assert not LabelSelector.parse("b>1").matches(labels)  # non-integer never matches gt/lt
    assert LabelSelector.parse("z in (x,)").requirements[0].values == frozenset({"x", ""})
    assert LabelSelector.parse("z=").matches({"z": ""})
    assert not LabelSelector.parse("!a").matches(labels)
    assert FieldSelector.parse(r"metadata.name=a\,b").matches({"name": "a,b"})
    for bad in ("a in (x", "=x", "a=b=c", "!", "a,,b", "a < x", "Bad_Prefix.io/x", "in"):
        with pytest.raises(SelectorError):
            LabelSelector.parse(bad)


# --------------------------------------------------------------------------------------- get / list


def test_get_single_object_and_not_found(fake: FakeKubeAPIServer, api: client.CustomObjectsApi) -> None:
    created = fake.create(ko.make_vmi("default", "cat8kv-01", "kubevirt-nn4bm-worker-9fxdj"))
    got = api.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "cat8kv-01")
    assert got == created
    assert got["metadata"]["uid"] == "3cbb32a1-f11c-4065-99e6-62ce670bff12"
    with pytest.raises(ApiException) as info:
        api.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "missing")
    assert info.value.status == 404
    body = status_body(info.value)
    assert body["reason"] == "NotFound"
    assert body["message"] == 'virtualmachineinstances.kubevirt.io "missing" not found'
    assert body["details"] == {"name": "missing", "group": "kubevirt.io", "kind": "virtualmachineinstances"}


def test_pagination_serves_one_consistent_snapshot(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi
) -> None:
    for i in range(10):
        fake.create(vmi(f"vm-{i:02d}"))
    first = list_vmis(api, limit=4)
    snapshot_rv = first["metadata"]["resourceVersion"]
    assert names(first["items"]) == ["vm-00", "vm-01", "vm-02", "vm-03"]
    assert first["metadata"]["remainingItemCount"] == 6
    before = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in fake.objects()}

    # Change the store between pages: none of this may leak into the paginated list.
    fake.delete("default", "vm-05")
    fake.create(vmi("vm-04a"))
    fake.patch_status("default", "vm-06", phase="Failed")
    fake.create(vmi("vm-99"))

    pages = [first]
    while pages[-1]["metadata"].get("continue"):
        pages.append(list_vmis(api, limit=4, _continue=pages[-1]["metadata"]["continue"]))
    assert [p["metadata"]["resourceVersion"] for p in pages] == [snapshot_rv] * 3
    items = [item for page in pages for item in page["items"]]
    assert {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in items} == before
    assert next(o for o in items if o["metadata"]["name"] == "vm-06")["status"]["phase"] == "Running"
    assert "continue" not in pages[-1]["metadata"]

    exact = list_vmis(api, resource_version=snapshot_rv, resource_version_match="Exact")
    assert exact["items"] == items
    latest = list_vmis(api)
    assert "vm-05" not in names(latest["items"])
    assert {"vm-04a", "vm-99"} <= set(names(latest["items"]))


def test_pagination_with_selector_and_namespace(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi
) -> None:
    for i in range(6):
        fake.create(vmi(f"vm-{i}", "node-a" if i % 2 else "node-b"))
        fake.create(vmi(f"vm-{i}", "node-a", namespace="zz"))
    seen: list[str] = []
    token = None
    while True:
        page = list_vmis(api, "default", label_selector=f"{NODE}=node-a", limit=2, _continue=token)
        assert "remainingItemCount" not in page["metadata"]  # never reported with a selector
        seen += names(page["items"])
        token = page["metadata"].get("continue")
        if not token:
            break
    assert seen == ["vm-1", "vm-3", "vm-5"]


def test_expired_continue_token_is_410_with_inconsistent_token(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi
) -> None:
    for i in range(6):
        fake.create(vmi(f"vm-{i}"))
    first = list_vmis(api, limit=3)
    fake.create(vmi("vm-9"))
    fake.compact()
    with pytest.raises(ApiException) as info:
        list_vmis(api, limit=3, _continue=first["metadata"]["continue"])
    assert info.value.status == 410
    body = status_body(info.value)
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "Expired", 410)
    assert body["message"] == CONTINUE_EXPIRED_MESSAGE
    # As on a real server, the error carries a token that continues (inconsistently) from the latest state.
    rest = list_vmis(api, limit=10, _continue=body["metadata"]["continue"])
    assert names(rest["items"]) == ["vm-3", "vm-4", "vm-5", "vm-9"]
    assert rest["metadata"]["resourceVersion"] == fake.resource_version


def test_list_resource_version_rules(fake: FakeKubeAPIServer, api: client.CustomObjectsApi) -> None:
    fake.create(vmi("vm-1"))
    current = int(fake.resource_version)
    assert list_vmis(api, resource_version="0")["metadata"]["resourceVersion"] == str(current)
    assert list_vmis(api, resource_version=str(current))["metadata"]["resourceVersion"] == str(current)
    with pytest.raises(ApiException) as too_large:
        list_vmis(api, resource_version=str(current + 100))
    assert too_large.value.status == 504
    assert "Too large resource version" in status_body(too_large.value)["message"]
    with pytest.raises(ApiException) as forbidden:
        list_vmis(api, resource_version_match="Exact")
    assert forbidden.value.status == 422


# -------------------------------------------------------------------------------------------- watch


def test_watch_from_list_rv_delivers_changes_in_order(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi, recorders: list[StreamRecorder]
) -> None:
    fake.create(vmi("before"))
    list_rv = list_vmis(api)["metadata"]["resourceVersion"]
    # Changes made after the list but before the watch starts must be replayed from history...
    fake.create(vmi("vm-1"))
    fake.patch_status("default", "vm-1", phase="Succeeded")
    fake.delete("default", "vm-1")
    recorder = StreamRecorder(api, resource_version=list_rv, timeout_seconds=30)
    recorders.append(recorder)
    replayed = recorder.events(3)
    fake.wait_for_watches(1)
    # ...and live changes follow in order.
    fake.create(vmi("vm-2"))
    fake.patch_labels("default", "before", {"extra": "yes"})
    live = recorder.events(2)
    events = replayed + live
    assert summary(events) == [
        ("ADDED", "vm-1"),
        ("MODIFIED", "vm-1"),
        ("DELETED", "vm-1"),
        ("ADDED", "vm-2"),
        ("MODIFIED", "before"),
    ]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == list(range(int(list_rv) + 1, int(list_rv) + 6))
    assert events[1]["object"]["status"]["phase"] == "Succeeded"
    assert events[2]["object"]["status"]["phase"] == "Succeeded"  # DELETED carries the last state...
    assert recorder.watch.resource_version == str(rvs[-1])  # ...and the client tracks the RV it saw
    # the client spells the flag "true" (36 and later) or "True" (before); Go's ParseBool takes both
    assert (
        fake.queries("watch")[-1].lower().endswith(f"resourceversion={list_rv}&timeoutseconds=30&watch=true")
    )


def test_watch_without_rv_starts_with_synthetic_added(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi, recorders: list[StreamRecorder]
) -> None:
    fake.create(vmi("vm-b", "node-b"))
    fake.create(vmi("vm-a", "node-a"))
    fake.create(vmi("vm-c", "node-a"))
    recorder = StreamRecorder(api, label_selector=f"{NODE}=node-a", timeout_seconds=30)
    recorders.append(recorder)
    assert summary(recorder.events(2)) == [("ADDED", "vm-a"), ("ADDED", "vm-c")]
    fake.wait_for_watches(1)
    fake.delete("default", "vm-a")
    assert summary(recorder.events(1)) == [("DELETED", "vm-a")]


def test_selector_transitions_during_migration(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi, recorders: list[StreamRecorder]
) -> None:
    fake.create(ko.make_vmi("default", "mig", "node-a"))
    start_rv = fake.resource_version
    source = StreamRecorder(
        api, label_selector=f"{NODE}=node-a", resource_version=start_rv, timeout_seconds=30
    )
    target = StreamRecorder(
        api, label_selector=f"{NODE}=node-b", resource_version=start_rv, timeout_seconds=30
    )
    incoming = StreamRecorder(
        api,
        label_selector=f"{ko.MIGRATION_TARGET_NODE_LABEL}=node-b",
        resource_version=start_rv,
        timeout_seconds=30,
    )
    recorders.extend([source, target, incoming])
    fake.wait_for_watches(3)

    fake.update(ko.make_migrating_vmi("default", "mig", "node-a", "node-b"))
    running_rv = fake.resource_version
    fake.update(ko.make_migrating_vmi("default", "mig", "node-a", "node-b", completed=True))
    done_rv = fake.resource_version

    source_events = source.events(2)
    assert [e["type"] for e in source_events] == ["MODIFIED", "DELETED"]
    gone = source_events[1]["object"]
    # Real cacheWatcher semantics: the previous content (still on node-a), stamped with the event's RV.
    assert gone["metadata"]["labels"][NODE] == "node-a"
    assert gone["metadata"]["resourceVersion"] == done_rv
    assert len(gone["status"]["activePods"]) == 2

    (arrived,) = target.events(1)
    assert arrived["type"] == "ADDED"
    assert arrived["object"]["status"]["nodeName"] == "node-b"
    assert arrived["object"]["status"]["migrationState"]["completed"] is True

    incoming_events = incoming.events(2)
    assert [e["type"] for e in incoming_events] == ["ADDED", "DELETED"]
    assert [e["object"]["metadata"]["resourceVersion"] for e in incoming_events] == [running_rv, done_rv]


def test_bookmarks_periodic_and_on_demand(tmp_path: Path, recorders: list[StreamRecorder]) -> None:
    with FakeKubeAPIServer(bookmark_interval=0.05) as fake:
        api = client.CustomObjectsApi(api_client_for(fake, tmp_path / "kubeconfig"))
        fake.create(vmi("vm-1"))
        with_bookmarks = StreamRecorder(api, allow_watch_bookmarks=True, timeout_seconds=30)
        without = StreamRecorder(api, timeout_seconds=30)
        recorders.extend([with_bookmarks, without])
        first = with_bookmarks.events(2, bookmarks=True)
        assert summary(first[:1]) == [("ADDED", "vm-1")]
        bookmark = first[1]
        assert bookmark["type"] == "BOOKMARK"
        # kubernetes.watch yields BOOKMARKs with the raw, undeserialized object and records its RV.
        assert bookmark["object"] == {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"resourceVersion": fake.resource_version},
        }
        assert with_bookmarks.watch.resource_version == fake.resource_version
        fake.wait_for_watches(2)  # "without" must have its initial state before the delete
        fake.delete("default", "vm-1")
        assert summary(without.events(2)) == [("ADDED", "vm-1"), ("DELETED", "vm-1")]
        assert without.items.empty()

    with FakeKubeAPIServer(bookmark_interval=3600) as fake:
        api = client.CustomObjectsApi(api_client_for(fake, tmp_path / "kubeconfig2"))
        recorder = StreamRecorder(api, allow_watch_bookmarks=True, timeout_seconds=30)
        plain = StreamRecorder(api, timeout_seconds=30)
        recorders.extend([recorder, plain])
        fake.wait_for_watches(2)
        assert fake.send_bookmarks() == 1  # only watches that allowed bookmarks get them
        (on_demand,) = recorder.events(1, bookmarks=True)
        assert on_demand["type"] == "BOOKMARK"
        assert on_demand["object"]["metadata"]["resourceVersion"] == fake.resource_version


def test_send_initial_events_ends_with_annotated_bookmark(fake: FakeKubeAPIServer) -> None:
    # The installed client has no sendInitialEvents parameter, so this one speaks HTTP directly.
    fake.create(vmi("vm-1"))
    http = urllib3.PoolManager()
    response = http.request(
        "GET",
        f"{fake.url}/apis/kubevirt.io/v1/virtualmachineinstances?watch=1&sendInitialEvents=true"
        "&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=30",
        preload_content=False,
    )
    assert response.headers["Transfer-Encoding"] == "chunked"
    lines: list[dict[str, Any]] = []
    for chunk in response.stream(decode_content=False):  # one event per chunk, as the real server sends
        lines.append(json.loads(chunk))
        if len(lines) == 2:
            break
    response.release_conn()
    assert [line["type"] for line in lines] == ["ADDED", "BOOKMARK"]
    assert lines[1]["object"]["metadata"]["annotations"] == {INITIAL_EVENTS_END_ANNOTATION: "true"}


def test_too_old_resource_version_yields_410(fake: FakeKubeAPIServer, api: client.CustomObjectsApi) -> None:
    old_rv = fake.resource_version
    fake.create(vmi("vm-1"))
    fake.compact()
    expected = f"Expired: too old resource version: {old_rv} ({fake.oldest_resource_version})"

    # With timeout_seconds the client does not retry: the first ERROR/410 event raises.
    with pytest.raises(ApiException) as info:
        list(
            watch.Watch().stream(
                api.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                resource_version=old_rv,
                timeout_seconds=5,
            )
        )
    assert (info.value.status, info.value.reason) == (410, expected)
    assert fake.watch_requests == 1

    # Without it, kubernetes.watch silently re-watches once from the same RV, then raises.
    with pytest.raises(ApiException) as info:
        list(
            watch.Watch().stream(
                api.list_cluster_custom_object, GROUP, VERSION, PLURAL, resource_version=old_rv
            )
        )
    assert (info.value.status, info.value.reason) == (410, expected)
    assert fake.watch_requests == 3


def test_drop_streams_ends_client_stream_abruptly(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi, recorders: list[StreamRecorder]
) -> None:
    recorder = StreamRecorder(api, timeout_seconds=30)
    recorders.append(recorder)
    fake.wait_for_watches(1)
    assert fake.drop_streams() == 1
    assert isinstance(recorder.outcome(), urllib3.exceptions.ProtocolError)
    fake.wait_for(lambda: fake.open_watches == 0, "the watch stream closed")


def test_wait_for_fails_naming_what_never_happened(fake: FakeKubeAPIServer) -> None:
    """A wait that times out fails the test there, saying what it waited for; it never returns."""
    with pytest.raises(AssertionError, match=r"2 open watch streams did not happen within 0\.2s \(0 open"):
        fake.wait_for_watches(2, timeout=0.2)
    with pytest.raises(AssertionError, match=r"the VMI 'late' did not happen within 0\.1s"):
        fake.wait_for(lambda: False, "the VMI 'late'", timeout=0.1)


def test_wait_for_returns_once_a_change_makes_it_true(fake: FakeKubeAPIServer) -> None:
    creator = threading.Timer(0.05, lambda: fake.create(vmi("late")))
    creator.start()
    try:
        fake.wait_for(
            lambda: fake.get("default", "late") is not None, "the VMI created by the timer", timeout=10
        )
    finally:
        creator.join()


def test_end_streams_and_timeout_seconds_end_cleanly(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi, recorders: list[StreamRecorder]
) -> None:
    ended = StreamRecorder(api, timeout_seconds=30)
    recorders.append(ended)
    fake.wait_for_watches(1)
    assert fake.end_streams() == 1
    assert ended.outcome() is _END

    started = time.monotonic()
    timed = StreamRecorder(api, timeout_seconds=1)
    recorders.append(timed)
    assert timed.outcome() is _END
    assert 0.9 <= time.monotonic() - started < 4


def test_stop_refuses_then_start_accepts_on_same_port(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi, recorders: list[StreamRecorder]
) -> None:
    fake.create(vmi("vm-1"))
    port = fake.port
    assert names(list_vmis(api)["items"]) == ["vm-1"]
    recorder = StreamRecorder(api, resource_version=fake.resource_version, timeout_seconds=30)
    recorders.append(recorder)
    fake.wait_for_watches(1)

    fake.stop()
    assert isinstance(recorder.outcome(), urllib3.exceptions.ProtocolError)
    with pytest.raises(urllib3.exceptions.MaxRetryError) as info:
        list_vmis(api)
    assert isinstance(info.value.reason, urllib3.exceptions.NewConnectionError)

    fake.start()
    assert fake.port == port
    assert names(list_vmis(api)["items"]) == ["vm-1"]


def test_restart_with_new_history_makes_old_rv_410(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi, recorders: list[StreamRecorder]
) -> None:
    fake.create(vmi("vm-1"))
    fake.create(vmi("vm-2"))
    old_rv = list_vmis(api)["metadata"]["resourceVersion"]
    open_watch = StreamRecorder(api, resource_version=old_rv, timeout_seconds=30)
    recorders.append(open_watch)
    fake.wait_for_watches(1)

    fake.restart_with_new_history(objects=[fake.get("default", "vm-1") or {}])
    assert isinstance(open_watch.outcome(), urllib3.exceptions.ProtocolError)
    with pytest.raises(ApiException) as info:
        list(
            watch.Watch().stream(
                api.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                resource_version=old_rv,
                timeout_seconds=5,
            )
        )
    assert info.value.status == 410

    relisted = list_vmis(api)
    assert names(relisted["items"]) == ["vm-1"]  # restored from the older "snapshot"
    new_rv = relisted["metadata"]["resourceVersion"]
    assert int(new_rv) >= int(old_rv) + 1_000_000
    resumed = StreamRecorder(api, resource_version=new_rv, timeout_seconds=30)
    recorders.append(resumed)
    fake.create(vmi("vm-3"))
    (event,) = resumed.events(1)
    assert (event["type"], event["object"]["metadata"]["resourceVersion"]) == ("ADDED", str(int(new_rv) + 1))


# ------------------------------------------------------------------------------------- faults, auth


def test_fail_requests_then_recover(fake: FakeKubeAPIServer, api: client.CustomObjectsApi) -> None:
    fake.fail_requests(2, status=503)
    for _ in range(2):
        with pytest.raises(ApiException) as info:
            list_vmis(api)
        assert info.value.status == 503
        assert status_body(info.value)["reason"] == "ServiceUnavailable"
    assert list_vmis(api)["items"] == []
    assert fake.list_requests == 3

    # urllib3's default Retry honours Retry-After on 429/503: the caller never sees these two failures.
    fake.fail_requests(2, status=429, retry_after=0)
    assert list_vmis(api)["items"] == []
    assert fake.list_requests == 6

    fake.fail_requests(1, status=500, verbs={"watch"})
    assert list_vmis(api)["items"] == []  # lists are not affected
    with pytest.raises(ApiException) as watch_failure:
        list(watch.Watch().stream(api.list_cluster_custom_object, GROUP, VERSION, PLURAL, timeout_seconds=1))
    assert watch_failure.value.status == 500


def test_hang_requests_for_client_timeouts(
    fake: FakeKubeAPIServer, api: client.CustomObjectsApi, tmp_path: Path
) -> None:
    # urllib3's default Retry(3) transparently retries a GET whose read timed out...
    # (a (connect, read) pair: kubernetes before 36 ignores a single float timeout altogether)
    fake.hang_requests(1)
    assert list_vmis(api, _request_timeout=(5, 0.2))["items"] == []
    assert fake.list_requests == 2

    # ...so only with retries disabled does the timeout reach the caller.
    no_retry = client.CustomObjectsApi(api_client_for(fake, tmp_path / "noretry", retries=False))
    fake.hang_requests(1)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        list_vmis(no_retry, _request_timeout=(5, 0.2))
    fake.release_hung_requests()
    assert list_vmis(no_retry)["items"] == []


def test_bearer_token_auth(tmp_path: Path) -> None:
    with FakeKubeAPIServer(token="s3cret") as fake:
        good = client.CustomObjectsApi(api_client_for(fake, tmp_path / "good"))
        assert list_vmis(good)["items"] == []
        assert fake.requests[-1].authorization == "Bearer s3cret"
        for token in ("wrong", ""):
            bad = client.CustomObjectsApi(api_client_for(fake, tmp_path / f"bad{token}", token=token))
            with pytest.raises(ApiException) as info:
                list_vmis(bad)
            assert info.value.status == 401
            assert status_body(info.value)["reason"] == "Unauthorized"


def test_discovery_version_and_unknown_paths(fake: FakeKubeAPIServer, api_client: client.ApiClient) -> None:
    assert client.VersionApi(api_client).get_code().git_version == "v1.30.0-fake"
    groups = client.ApisApi(api_client).get_api_versions().groups
    assert [g.name for g in groups] == ["kubevirt.io"]
    http = urllib3.PoolManager()
    resources = json.loads(http.request("GET", f"{fake.url}/apis/kubevirt.io/v1").data)
    assert resources["resources"][0]["name"] == "virtualmachineinstances"
    unknown = http.request("GET", f"{fake.url}/apis/kubevirt.io/v1/nothing-here")
    assert unknown.status == 404
    assert json.loads(unknown.data)["kind"] == "Status"
    assert http.request("GET", f"{fake.url}/healthz").data == b"ok"
    assert fake.request_count("unknown") == 1


# -------------------------------------------------------------------------------------------- scale


def test_many_operations_with_watchers(tmp_path: Path, recorders: list[StreamRecorder]) -> None:
    """Thousands of changes with a tiny history window: every watcher sees every event once and the history
    (hence old RVs) stays bounded.  Proportions of a 100k-operation run, scaled to keep this test fast.
    """
    count = 1500
    with FakeKubeAPIServer(history_window=100, bookmark_interval=3600) as fake:
        api = client.CustomObjectsApi(api_client_for(fake, tmp_path / "kubeconfig"))
        everything = StreamRecorder(api, timeout_seconds=60)
        node_a = StreamRecorder(api, label_selector=f"{NODE}=node-a", timeout_seconds=60)
        recorders.extend([everything, node_a])
        fake.wait_for_watches(2)
        base = ko.make_vmi("default", "x", "node-a")
        for i in range(count):
            base["metadata"]["name"] = f"vm-{i}"
            base["metadata"]["labels"][NODE] = "node-a" if i % 2 else "node-b"
            fake.create(base)
            fake.delete("default", f"vm-{i}")
        assert len(everything.events(2 * count)) == 2 * count
        node_a_events = node_a.events(count)
        assert {e["object"]["metadata"]["labels"][NODE] for e in node_a_events} == {"node-a"}
        assert int(fake.resource_version) - int(fake.oldest_resource_version) == 100
        assert everything.items.empty()
        assert node_a.items.empty()


# --------------------------------------------------------------------------------- fixtures helpers


def test_make_vmi_keeps_the_real_object_and_derives_variants() -> None:
    real = ko.base_vmi()
    same = ko.make_vmi("default", "cat8kv-01", "kubevirt-nn4bm-worker-9fxdj")
    assert same["metadata"]["uid"] == real["metadata"]["uid"]
    assert same["status"]["activePods"] == real["status"]["activePods"]
    assert "resourceVersion" not in same["metadata"]
    assert same["spec"] == real["spec"]

    derived = ko.make_vmi(
        "ns1", "vm-x", "node-9", phase="Scheduled", runtime_user=None, pod_uid="p-1", uid="u-1"
    )
    assert derived["metadata"]["uid"] == "u-1"
    assert derived["metadata"]["labels"][NODE] == "node-9"
    assert derived["status"]["nodeName"] == "node-9"
    assert derived["status"]["activePods"] == {"p-1": "node-9"}
    assert derived["status"]["phase"] == "Scheduled"
    assert "runtimeUser" not in derived["status"]
    assert ko.make_vmi("ns1", "vm-x", "node-9") == ko.make_vmi("ns1", "vm-x", "node-9")  # deterministic

    pending = ko.make_vmi("ns1", "vm-p", None, phase="Pending")
    assert NODE not in pending["metadata"]["labels"]
    assert "activePods" not in pending["status"] and "nodeName" not in pending["status"]


def test_make_migrating_vmi() -> None:
    running = ko.make_migrating_vmi(
        "default", "vm-m", "node-a", "node-b", source_pod_uid="src", target_pod_uid="dst"
    )
    assert running["status"]["activePods"] == {"src": "node-a", "dst": "node-b"}
    assert running["status"]["nodeName"] == "node-a"
    assert running["metadata"]["labels"][ko.MIGRATION_TARGET_NODE_LABEL] == "node-b"
    state = running["status"]["migrationState"]
    assert (state["sourceNode"], state["targetNode"], state["completed"]) == ("node-a", "node-b", False)

    done = ko.make_migrating_vmi("default", "vm-m", "node-a", "node-b", completed=True)
    assert done["status"]["nodeName"] == "node-b"
    assert done["metadata"]["labels"][NODE] == "node-b"
    assert ko.MIGRATION_TARGET_NODE_LABEL not in done["metadata"]["labels"]
    assert len(done["status"]["activePods"]) == 2
    assert "endTimestamp" in done["status"]["migrationState"]
