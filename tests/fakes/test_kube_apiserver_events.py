"""The fake API server takes Event writes as the real one does, and refuses writes of anything else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.fakes.kube_apiserver import FakeKubeAPIServer


@pytest.fixture
def core(tmp_path: Path) -> Iterator[tuple[FakeKubeAPIServer, Any]]:
    with FakeKubeAPIServer() as api:
        api_client = config.new_client_from_config(config_file=str(api.write_kubeconfig(tmp_path / "kc")))
        yield api, client.CoreV1Api(api_client)


def event(name: str = "runner.abc", message: str = "first") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "ci"},
        "involvedObject": {
            "kind": "VirtualMachineInstance",
            "name": "runner",
            "namespace": "ci",
            "uid": "u1",
        },
        "type": "Warning",
        "reason": "SoftwareEmulation",
        "message": message,
        "count": 1,
    }


def test_create_then_409_on_the_same_name(core: tuple[FakeKubeAPIServer, Any]) -> None:
    api, v1 = core
    created = v1.create_namespaced_event("ci", event())
    assert created.metadata.uid and created.message == "first"
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_event("ci", event(message="again"))
    assert error.value.status == 409 and "already exists" in str(error.value.body)
    (stored,) = api.objects(kind="Event")
    assert stored["message"] == "first"
    listed = v1.list_namespaced_event("ci", field_selector="involvedObject.name=runner").items
    assert [e.metadata.name for e in listed] == ["runner.abc"]


def test_patch_and_put_change_an_existing_event(core: tuple[FakeKubeAPIServer, Any]) -> None:
    api, v1 = core
    v1.create_namespaced_event("ci", event())
    v1.patch_namespaced_event("runner.abc", "ci", {"count": 2, "message": "patched"})
    stored = api.get("ci", "runner.abc", kind="Event")
    assert stored is not None and (stored["count"], stored["message"]) == (2, "patched")
    assert stored["reason"] == "SoftwareEmulation", "a merge patch keeps the other fields"
    v1.replace_namespaced_event("runner.abc", "ci", event(message="replaced"))
    stored = api.get("ci", "runner.abc", kind="Event")
    assert stored is not None and stored["message"] == "replaced"
    for call in (
        lambda: v1.patch_namespaced_event("missing", "ci", {"count": 2}),
        lambda: v1.replace_namespaced_event("missing", "ci", event("missing")),
    ):
        with pytest.raises(ApiException) as error:
            call()
        assert error.value.status == 404


def test_forbidden_events_answer_403_with_the_verb(core: tuple[FakeKubeAPIServer, Any]) -> None:
    api, v1 = core
    api.forbid("events")
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_event("ci", event())
    assert error.value.status == 403 and 'cannot create resource \\"events\\"' in str(error.value.body)
    assert api.objects(kind="Event") == []
    api.allow("events")
    v1.create_namespaced_event("ci", event())
    assert len(api.objects(kind="Event")) == 1


def test_writes_of_anything_else_are_refused(core: tuple[FakeKubeAPIServer, Any]) -> None:
    api, v1 = core
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ci"}}
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_pod("ci", pod)
    assert error.value.status == 405
    with pytest.raises(ApiException) as error:
        v1.delete_namespaced_event("runner.abc", "ci")
    assert error.value.status == 405
    assert api.objects(kind="Pod") == []


def test_a_dry_run_create_answers_as_a_create_and_stores_nothing(core: tuple[FakeKubeAPIServer, Any]) -> None:
    api, v1 = core
    answered = v1.create_namespaced_event("ci", event(), dry_run="All")
    assert answered.metadata.name == "runner.abc" and answered.metadata.uid
    assert api.objects(kind="Event") == []
    v1.create_namespaced_event("ci", event())
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_event("ci", event(), dry_run="All")
    assert error.value.status == 409, "validated against what is stored"
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_event("ci", event("other"), dry_run="Some")
    assert error.value.status == 400
    api.forbid("events")
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_event("ci", event("other"), dry_run="All")
    assert error.value.status == 403
    assert len(api.objects(kind="Event")) == 1
