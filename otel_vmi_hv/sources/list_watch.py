"""One list-then-watch loop for any Kubernetes resource, shaped as client-go's reflector shapes it.

Every agent of a DaemonSet runs these loops against one API server, so lists are served from its
watch cache (``resourceVersion=0``, then ``NotOlderThan`` the last version seen, paginated only where
the server has no cache, a consistent list only when even that version is gone), relists after an
outage wait a random spread, a watch silent past the silence timeout is resumed (bookmarks come
about every minute), and watch lines are capped. Retries back off by consecutive failures only; the
client's own retries are off (``api_client_for``). An exception from the handler or the recorder is
a bug, not a network fault: it is logged with its traceback, counted, and followed by a relist.
Requests go through the client's ``ApiClient``: a generated API class is costly to import.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.fields import mapping, text
from otel_vmi_hv.interfaces import Recorder
from otel_vmi_hv.sources.list_stream import ListBody
from otel_vmi_hv.worker import Worker

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
LIST_READ_TIMEOUT = 60.0
MIN_WATCH_SECONDS = 1.0  # a stream that ends sooner is followed by a pause: no spinning
CHUNK_BYTES = 65536  # read from list and watch responses at a time
BACKOFF = Backoff(initial=0.5, maximum=30.0)


class ResourceExpired(Exception):
    """The resume point (resourceVersion or continue token) is gone: a relist is needed."""


class HandlerBug(Exception):
    """The handler or the recorder raised: a bug in the agent, not a fault of the API server."""


@dataclass(frozen=True, slots=True)
class Resource:
    """A cluster-wide collection to list and watch, and how to name it to an operator."""

    plural: str
    group: str = ""  # "" for the core API group
    version: str = "v1"

    @property
    def name(self) -> str:
        """The name RBAC rules use: ``nodes``, ``virtualmachineinstances.kubevirt.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def path(self) -> str:
        """The collection's URL path: ``/api/v1/nodes``, ``/apis/kubevirt.io/v1/kubevirts``."""
        return (
            f"/apis/{self.group}/{self.version}/{self.plural}"
            if self.group
            else f"/api/{self.version}/{self.plural}"
        )

    def hint(self, status: int | None) -> str:
        """What an operator should do about an API answer that is not transient."""
        installed = "KubeVirt" if self.group == "kubevirt.io" else "this API"
        return {
            401: " (the agent's credentials were refused: check the service account token or KUBECONFIG)",
            403: f" (the service account may not list {self.name}: it needs get, list and watch on them"
            " cluster-wide; see config/kubernetes/clusterrole.yaml)",
            404: f" (no {self.name} resource: is {installed} installed in this cluster?)",
        }.get(status or 0, "")


def _query_name(name: str) -> str:
    """The API's name of a client parameter: ``labelSelector`` for ``label_selector``, and so on."""
    head, *rest = name.lstrip("_").split("_")
    return head + "".join(part.title() for part in rest)


def get_collection(api_client: Any, resource: Resource, timeout: tuple[float, float], **params: Any) -> Any:
    """GET a list or watch of ``resource``; the unread urllib3 response of a 2xx answer, else ApiException.

    Through the client's public ``ApiClient`` (authentication with token refresh, TLS, proxy),
    not a generated API class, whose import alone costs more than the rest of the client.
    """
    from kubernetes.client.exceptions import ApiException

    query = [(_query_name(name), value) for name, value in params.items() if value is not None]
    method, url, headers, body, post_params = api_client.param_serialize(
        "GET",
        resource.path,
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    answer = api_client.call_api(method, url, headers, body, post_params, _request_timeout=timeout)
    if not 200 <= answer.status <= 299:
        answer.read()
        raise ApiException(http_resp=answer)
    return answer.response


class ListWatchHandler(Protocol):
    """Keeps a resource's state: whole listings, then changes; told how the loop fares."""

    def relist_started(self) -> None:
        """A listing begins (or begins again after an expired continue token): start collecting."""

    def listed(self, obj: Mapping[str, Any]) -> None:
        """One object of the listing in progress."""

    def relist_done(self) -> None:
        """The listing is complete: what was not listed is gone."""

    def changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """An ADDED, MODIFIED or DELETED watch event."""

    def watching(self) -> None:
        """A watch stream opened: the API answers again."""

    def failed(self, status: int | None, reason: str) -> None:
        """A list or watch failed (``status``: the HTTP status, None when not an HTTP answer)."""


@dataclass(frozen=True, slots=True)
class ListWatchOptions:
    """How one loop lists and watches; the two timings come from the settings."""

    relist_spread: float  # longest random wait before a relist that follows an outage
    silence_timeout: float  # a watch bringing nothing for this long is resumed
    label_selector: str | None = None
    field_selector: str | None = None
    page_size: int = 100
    max_line_bytes: int = 16 * 1024 * 1024
    watch_timeout_range: tuple[int, int] = (240, 360)  # seconds; spread so agents do not re-watch in step
    backoff: Backoff = BACKOFF


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one cycle (a list if needed, then one watch stream) went."""

    delivered: bool  # a list completed or the stream brought an event or a bookmark
    failure: str | None = None  # why it failed; None: go on at once
    status: int | None = None  # the HTTP status of the failure, when it was an answer


class ListWatch:
    """Keeps a handler in step with one resource: list, then watch from the list's version, forever."""

    def __init__(
        self,
        resource: Resource,
        handler: ListWatchHandler,
        api_client: Callable[[], Any],
        options: ListWatchOptions,
        recorder: Recorder | None = None,
    ) -> None:
        self.resource = resource
        self._handler = handler
        self._api_client = api_client
        self._options = options
        self._recorder = recorder or Recorder()
        self._resource_version: str | None = None  # where the watch resumes; None: list first
        self._last_seen: str | None = None  # newest version seen, for a NotOlderThan relist
        self._paginated = False  # the server paginated a list: it has no watch cache for this resource
        self._consistent_next = False  # the last seen version is too old even for a list
        self._listed = False  # a listing completed once: later ones follow an outage
        self._delivered = False
        self._response: Any = None
        self._worker: Worker | None = None
        self.last_error: str | None = None  # why the last cycle failed, for `detect`

    def start(self, thread_name: str | None = None) -> None:
        self._worker = Worker(thread_name or f"watch-{self.resource.plural}", self._run)
        self._worker.start()

    def stop(self) -> None:
        """Stop the loop; an open watch blocked in a read ends at once."""
        if self._worker is not None:
            self._worker.stop()
        response = self._response
        if response is not None:
            # A shutdown wakes the blocked read with end-of-stream; close() would wait for the
            # reader's lock, held until the next event or bookmark.
            sock = getattr(getattr(response, "connection", None), "sock", None)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
                else:
                    response.close()
            except Exception:  # closing a half-dead socket may fail in many ways; it is going anyway
                log.debug("closing the %s watch response failed", self.resource.name, exc_info=True)

    # ------------------------------------------------------------------ the loop

    def _run(self, worker: Worker) -> None:
        failures = 0  # consecutive: a cycle that delivered starts the count again
        while not worker.stopping:
            try:
                outcome = self._cycle(worker)
            except HandlerBug as bug:
                log.exception("%s: bug in the handler; relisting", self.resource.name)
                self._recorder.record_handler_error()
                self._resource_version = None  # the handler's state is in doubt: rebuild it
                outcome = Outcome(False, f"bug in the {self.resource.name} handler: {bug}")
            failures = 0 if outcome.delivered else failures
            if outcome.failure is not None and not worker.stopping:
                failures += 1
                self._back_off(worker, failures, outcome)

    def _cycle(self, worker: Worker) -> Outcome:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import ReadTimeoutError

        self._delivered = False
        try:
            if self._resource_version is None:
                spread = random.uniform(0, self._options.relist_spread) if self._listed else 0.0  # noqa: S311
                if worker.sleep(spread):  # a relist after an outage waits: agents must not relist in step
                    return Outcome(False)
                self._relist()
            opened = time.monotonic()
            try:
                self._watch_once(worker)
            except ReadTimeoutError:  # the read timeout is the silence timeout
                if not worker.stopping:
                    log.info("%s watch silent too long; resuming it", self.resource.name)
                    self._tell(self._recorder.record_watch_restart, "silent")
                return Outcome(self._delivered)
            self._tell(self._recorder.record_watch_restart, "closed")
            if time.monotonic() - opened < MIN_WATCH_SECONDS:
                worker.sleep(MIN_WATCH_SECONDS)
            return Outcome(self._delivered)
        except ResourceExpired:
            self._expired("410 Gone")
        except ApiException as error:
            if error.status != 410 or self._resource_version is None:
                why = f"HTTP {error.status} {error.reason}{self.resource.hint(error.status)}"
                return Outcome(self._delivered, why, error.status)
            self._expired("HTTP 410")  # some servers refuse a too-old watch with HTTP 410
        except HandlerBug:
            raise
        except Exception as error:  # connection refused or reset, timeouts, bad JSON, long lines: transient
            return Outcome(self._delivered, f"{type(error).__name__}: {error}")
        return Outcome(self._delivered)

    def _tell(self, method: Callable[..., None], *args: Any) -> None:
        """Call the handler or the recorder: what it raises is a bug of the agent's."""
        try:
            method(*args)
        except Exception as error:
            raise HandlerBug(f"{type(error).__name__}: {error}") from error

    def _expired(self, how: str) -> None:
        log.info("%s watch position expired (%s); relisting", self.resource.name, how)
        self._resource_version = None
        self._tell(self._recorder.record_watch_restart, "expired")

    def _back_off(self, worker: Worker, failures: int, outcome: Outcome) -> None:
        """Report a failed cycle, then wait before the next attempt (jittered, growing)."""
        self.last_error = outcome.failure
        delay = self._options.backoff.delay(failures)
        what = f"{self.resource.name} {'list' if self._resource_version is None else 'watch'}"
        (log.warning if failures in (1, 5) or failures % 20 == 0 else log.debug)(
            "%s from the Kubernetes API failed (%s); retrying in %.1fs (attempt %d)",
            what,
            outcome.failure,
            delay,
            failures,
        )
        try:
            self._handler.failed(outcome.status, outcome.failure or "")
            self._recorder.record_watch_restart("error")
        except Exception:
            log.exception("%s: bug in the failure handler", self.resource.name)
            self._recorder.record_handler_error()
        worker.sleep(delay)

    def _selectors(self) -> dict[str, Any]:
        options = self._options
        return {"label_selector": options.label_selector, "field_selector": options.field_selector}

    def _list_params(self) -> dict[str, Any]:
        """The first page's parameters: from the watch cache whenever the server has one."""
        params = self._selectors()
        if self._consistent_next or (self._listed and self._last_seen is None):
            params["limit"] = self._options.page_size  # a consistent read, from etcd, paginated
        elif self._last_seen is None:
            params.update(resource_version="0", limit=self._options.page_size)  # limit: ignored by the cache
        else:
            params.update(resource_version=self._last_seen, resource_version_match="NotOlderThan")
            if self._paginated:  # no watch cache for this resource: etcd is read anyway, in pages
                params["limit"] = self._options.page_size
        return params

    def _relist(self) -> None:
        """List the whole collection (every page) into the handler."""
        from kubernetes.client.exceptions import ApiException

        first = self._list_params()
        params = dict(first)
        self._tell(self._handler.relist_started)
        while True:
            try:
                response = get_collection(
                    self._api_client(), self.resource, (CONNECT_TIMEOUT, LIST_READ_TIMEOUT), **params
                )
            except ApiException as error:
                if error.status != 410 or not ("_continue" in params or "resource_version_match" in first):
                    raise
                if "_continue" in params:
                    log.info("%s list continue token expired; restarting the list", self.resource.name)
                else:  # older than anything the server keeps: only a consistent read can answer
                    log.info("%s version too old to list from; listing afresh", self.resource.name)
                    self._consistent_next = True
                    first = self._list_params()
                params = dict(first)
                self._tell(self._handler.relist_started)
                continue
            metadata = self._list_page(response)
            token = text(metadata, "continue")
            if not token:
                break
            self._paginated = True
            params = {**self._selectors(), "_continue": token, "limit": self._options.page_size}
        self._tell(self._handler.relist_done)
        self._resource_version = text(metadata, "resourceVersion") or None
        self._last_seen = self._resource_version or self._last_seen
        self._consistent_next = False
        self._listed = self._delivered = True
        self.last_error = None
        self._tell(self._recorder.record_sync, time.time())
        self._tell(self._recorder.record_relist)

    def _list_page(self, response: Any) -> Mapping[str, Any]:
        """Hand one page's items to the handler as they are decoded; the page's list metadata."""
        body = ListBody(response.stream(amt=CHUNK_BYTES, decode_content=True), f"{self.resource.name} list")
        try:
            for item in body.items():
                if isinstance(item, Mapping):
                    self._tell(self._handler.listed, item)
                del item  # not held while the next one is decoded
        except BaseException:
            response.close()  # unread bytes must not go back to the pool with the connection
            raise
        finally:
            response.release_conn()
        return body.metadata

    def _watch_once(self, worker: Worker) -> None:
        response = get_collection(
            self._api_client(),
            self.resource,
            (CONNECT_TIMEOUT, self._options.silence_timeout),
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self._resource_version,
            timeout_seconds=random.randint(*self._options.watch_timeout_range),  # noqa: S311 - spreading
            **self._selectors(),
        )
        self._response = response
        try:
            self._tell(self._handler.watching)
            for event in watch_events(response, self._options.max_line_bytes, self.resource.name):
                if worker.stopping:
                    return
                self._apply(event)
        except BaseException:
            response.close()  # the client's retries are off: a half-read stream must not be reused
            raise
        finally:
            self._response = None
            response.release_conn()

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), mapping(event, "object")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise ResourceExpired(str(obj.get("message", "")))
            raise RuntimeError(
                f"watch error event: {obj.get('code')} {obj.get('reason')} {obj.get('message')}"
            )
        if not obj:
            return
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._tell(self._handler.changed, kind, obj)
        elif kind != "BOOKMARK":
            log.debug("ignoring %s watch event of type %r", self.resource.name, kind)
        self._resource_version = self._last_seen = (
            text(obj, "metadata", "resourceVersion") or self._resource_version
        )
        self._delivered = True
        self._tell(self._recorder.record_sync, time.time())


def watch_events(response: Any, max_line_bytes: int, what: str = "watch") -> Iterator[Mapping[str, Any]]:
    """Watch events from a streaming response: one JSON object per line, each at most the cap.

    Read by hand rather than through ``kubernetes.watch.Watch``, which buffers a line without any
    bound, turns objects into models, and re-opens streams by itself, hiding ends and 410s.
    """
    buffer = bytearray()
    scanned = 0  # bytes of the buffer already known to hold no newline
    for chunk in response.stream(amt=CHUNK_BYTES, decode_content=True):
        buffer += chunk
        while True:
            end = buffer.find(b"\n", scanned)
            length = len(buffer) if end < 0 else end
            if length > max_line_bytes:
                log.warning("%s watch line longer than %d bytes; restarting the watch", what, max_line_bytes)
                raise ValueError(f"watch line longer than {max_line_bytes} bytes")
            if end < 0:
                scanned = len(buffer)
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            scanned = 0
            if line.strip() and isinstance(event := json.loads(line), Mapping):
                yield event
    if buffer.strip() and isinstance(event := json.loads(bytes(buffer)), Mapping):
        yield event
