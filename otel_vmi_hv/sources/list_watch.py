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

import contextlib
import itertools
import json
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.fields import mapping, text
from otel_vmi_hv.interfaces import Recorder
from otel_vmi_hv.sources.list_stream import ListBody
from otel_vmi_hv.worker import Worker

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
LIST_READ_TIMEOUT = 60.0
REQUEST_TIMEOUT = (CONNECT_TIMEOUT, 30.0)  # one object's request: a lookup, an Event
MIN_WATCH_SECONDS = 1.0  # a stream that ends sooner is followed by a pause: no spinning
CHUNK_BYTES = 65536  # read from list and watch responses at a time
BACKOFF = Backoff(initial=0.5, maximum=30.0)


class Failure(NamedTuple):
    """Why a list-watch cycle failed, and the HTTP status when the API server answered one."""

    why: str
    status: int | None


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
        root = f"apis/{self.group}" if self.group else "api"
        return f"/{root}/{self.version}/{self.plural}"

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


def api_request(
    api_client: Any,
    method: str,
    path: str,
    *,
    query: list[tuple[str, Any]] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    timeout: tuple[float, float] = REQUEST_TIMEOUT,
) -> Any:
    """One request; the unread urllib3 response, whatever its status.

    Through the client's public ``ApiClient`` (authentication with token refresh, TLS, proxy),
    not a generated API class, whose import alone costs more than the rest of the client.
    """
    headers = {"Accept": "application/json"} | ({"Content-Type": content_type} if body is not None else {})
    request = api_client.param_serialize(
        method, path, query_params=query, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    return api_client.call_api(*request, _request_timeout=timeout)


def get_collection(api_client: Any, resource: Resource, timeout: tuple[float, float], **params: Any) -> Any:
    """GET a list or watch of ``resource``; the unread urllib3 response of a 2xx answer, else ApiException."""
    from kubernetes.client.exceptions import ApiException

    query = [(_query_name(name), value) for name, value in params.items() if value is not None]
    answer = api_request(api_client, "GET", resource.path, query=query, timeout=timeout)
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
        self._selectors = {"label_selector": options.label_selector, "field_selector": options.field_selector}
        self._resource_version: str | None = None  # where the watch resumes; None: list first
        self._last_seen: str | None = None  # newest version seen, for a NotOlderThan relist
        self._paginated = False  # the server paginated a list: it has no watch cache for this resource
        self._consistent_next = False  # the last seen version is too old even for a list
        self._listed = False  # a listing completed once: later ones follow an outage
        self._delivered = False  # the cycle in progress completed a list or brought an event or bookmark
        self._response: Any = None  # the open list or watch answer, cut by stop()
        self._worker: Worker | None = None
        self.last_error: str | None = None  # why the last cycle failed, for `detect`

    def start(self, thread_name: str | None = None) -> None:
        self._worker = Worker(thread_name or f"watch-{self.resource.plural}", self._run)
        self._worker.start()

    def stop(self) -> None:
        """Stop the loop; an open watch blocked in a read ends at once."""
        if self._worker is not None:
            self._worker.stop()
        # A shutdown wakes the blocked read with end-of-stream; close() would wait for the reader's
        # lock, held until the next event or bookmark. No socket: the answer was already let go.
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # a half-dead socket: it is going anyway
                sock.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ the loop

    def _run(self, worker: Worker) -> None:
        failures = 0  # consecutive: a cycle that delivered starts the count again
        while not worker.stopping:
            self._delivered = False
            try:
                failure = self._cycle(worker)
            except HandlerBug as bug:
                log.exception("%s: bug in the handler; relisting", self.resource.name)
                self._recorder.record_handler_error()
                self._resource_version = None  # the handler's state is in doubt: rebuild it
                self._delivered = False  # a relist that works hides no bug: the backoff grows
                failure = Failure(f"bug in the {self.resource.name} handler: {bug}", None)
            failures = 0 if self._delivered else failures
            if failure is None or worker.stopping:
                continue
            failures += 1
            why, status = failure
            self.last_error = why
            delay = self._options.backoff.delay(failures)
            (log.warning if failures in (1, 5) or failures % 20 == 0 else log.debug)(
                "%s %s from the Kubernetes API failed (%s); retrying in %.1fs (attempt %d)",
                self.resource.name,
                "list" if self._resource_version is None else "watch",
                why,
                delay,
                failures,
            )
            try:
                self._handler.failed(status, why)
                self._recorder.record_watch_restart("error")
            except Exception:
                log.exception("%s: bug in the failure handler", self.resource.name)
                self._recorder.record_handler_error()
            worker.sleep(delay)

    def _cycle(self, worker: Worker) -> Failure | None:
        """A list if needed, then one watch stream; why it failed and the HTTP status, or None."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import ReadTimeoutError

        try:
            if self._resource_version is None:
                spread = random.uniform(0, self._options.relist_spread) if self._listed else 0.0  # noqa: S311
                if worker.sleep(spread):  # a relist after an outage waits: agents must not relist in step
                    return None
                self._relist()
            opened = time.monotonic()
            try:
                self._watch(worker)
            except ReadTimeoutError:  # the read timeout is the silence timeout
                if not worker.stopping:
                    log.info("%s watch silent too long; resuming it", self.resource.name)
                    self._tell(self._recorder.record_watch_restart, "silent")
                return None
            self._tell(self._recorder.record_watch_restart, "closed")
            if time.monotonic() - opened < MIN_WATCH_SECONDS:
                worker.sleep(MIN_WATCH_SECONDS)
        except ApiException as error:
            if error.status != 410 or self._resource_version is None:
                return Failure(
                    f"HTTP {error.status} {error.reason}{self.resource.hint(error.status)}", error.status
                )
            log.info("%s watch position expired (%s); relisting", self.resource.name, error.reason)
            self._resource_version = None
            self._tell(self._recorder.record_watch_restart, "expired")
        except HandlerBug:
            raise
        except Exception as error:  # connection refused or reset, timeouts, bad JSON, long lines: transient
            return Failure(f"{type(error).__name__}: {error}", None)
        return None

    def _tell(self, method: Callable[..., None], *args: Any) -> None:
        """Call the handler or the recorder: what it raises is a bug of the agent's."""
        try:
            method(*args)
        except Exception as error:
            raise HandlerBug(f"{type(error).__name__}: {error}") from error

    def _list_params(self) -> dict[str, Any]:
        """The first page's parameters: from the watch cache whenever the server has one."""
        params: dict[str, Any] = dict(self._selectors)
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

        params = self._list_params()
        self._tell(self._handler.relist_started)
        while True:
            try:
                with self._request(LIST_READ_TIMEOUT, params) as chunks:
                    body = ListBody(chunks, f"{self.resource.name} list")
                    for item in body.items():
                        if isinstance(item, Mapping):
                            self._tell(self._handler.listed, item)
                        del item  # not held while the next one is decoded
            except ApiException as error:
                if error.status != 410 or not ("_continue" in params or "resource_version_match" in params):
                    raise
                expired = "continue token" if "_continue" in params else "version"
                log.info("%s list %s expired; listing afresh", self.resource.name, expired)
                # A version older than anything the server keeps: only a consistent read can answer.
                self._consistent_next |= "_continue" not in params
                params = self._list_params()
                self._tell(self._handler.relist_started)
                continue
            if not (token := text(body.metadata, "continue")):
                break
            self._paginated = True
            params = {**self._selectors, "_continue": token, "limit": self._options.page_size}
        self._tell(self._handler.relist_done)
        self._resource_version = text(body.metadata, "resourceVersion") or None
        self._last_seen = self._resource_version or self._last_seen
        self._consistent_next = False
        self._listed = self._delivered = True
        self.last_error = None
        self._tell(self._recorder.record_sync, time.time())
        self._tell(self._recorder.record_relist)

    def _watch(self, worker: Worker) -> None:
        """One watch stream from the last version, applied event by event until it ends."""
        params = {
            **self._selectors,
            "watch": True,
            "allow_watch_bookmarks": True,
            "resource_version": self._resource_version,
            "timeout_seconds": random.randint(*self._options.watch_timeout_range),  # noqa: S311 - spreading
        }
        with self._request(self._options.silence_timeout, params) as chunks:
            self._tell(self._handler.watching)
            for event in watch_events(chunks, self._options.max_line_bytes):
                if worker.stopping:
                    return
                self._apply(event)

    @contextlib.contextmanager
    def _request(self, read_timeout: float, params: dict[str, Any]) -> Iterator[Iterator[bytes]]:
        """A list or watch answer's body, in chunks; the connection goes back to the pool only if read."""
        response = get_collection(
            self._api_client(), self.resource, (CONNECT_TIMEOUT, read_timeout), **params
        )
        self._response = response
        try:
            yield response.stream(amt=CHUNK_BYTES, decode_content=True)
        except BaseException:
            response.close()  # the client's retries are off: a half-read answer must not be reused
            raise
        finally:
            self._response = None
            response.release_conn()

    def _apply(self, event: Mapping[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        kind, obj = event.get("type"), mapping(event, "object")
        if kind == "ERROR":  # 410: the version to resume from is gone
            code = obj.get("code")
            raise ApiException(
                code if isinstance(code, int) else None, f"{obj.get('reason')}: {obj.get('message')}"
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


def watch_events(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[Mapping[str, Any]]:
    """Watch events from a streaming body: one JSON object per line, each at most the cap.

    Read by hand rather than through ``kubernetes.watch.Watch``, which buffers a line without any
    bound, turns objects into models, and re-opens streams by itself, hiding ends and 410s.
    """
    buffer = bytearray()
    for chunk in itertools.chain(chunks, [b"\n"]):  # the last line may lack its newline
        scanned = len(buffer)  # no newline before this
        buffer += chunk
        while (end := buffer.find(b"\n", scanned)) >= 0 or len(buffer) > max_line_bytes:
            if not 0 <= end <= max_line_bytes:
                raise ValueError(f"watch line longer than {max_line_bytes} bytes")
            line = buffer[:end]
            del buffer[: end + 1]
            scanned = 0
            if line.strip() and isinstance(event := json.loads(line), Mapping):
                yield event
