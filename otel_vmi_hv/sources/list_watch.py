"""One list-then-watch loop for any Kubernetes resource, cheap on the API server at fleet scale.

Every agent of a DaemonSet runs these loops against the same API server, so each request is shaped
the way client-go's reflector shapes it:

- the first list asks for ``resourceVersion=0``: the API server answers it from its watch cache
  (ignoring ``limit``; a server without a watch cache for the resource paginates instead, and the
  loop then keeps paginating);
- a relist (after ``410 Gone``) asks for ``resourceVersion=<last seen>`` with
  ``resourceVersionMatch=NotOlderThan`` and no ``limit``, which the watch cache also serves; with a
  ``limit`` the server would read etcd instead. Only when even that version is too old (HTTP 410)
  does the loop fall back to a consistent list, as the reflector does;
- relists after an outage wait a random delay first, so the agents of thousands of nodes that lost
  their resume point at the same moment do not all relist in the same second;
- a watch that brings neither an event nor a bookmark for ``silence_timeout`` is ended and resumed:
  the API server sends bookmarks about every minute, so silence means a dead connection;
- watch lines are capped: an oversized line ends the watch (and is logged) instead of growing a
  buffer without bound.

The handler sees each listed object as it is decoded (neither a page nor the whole body is held as
objects: ``list_stream.py``) and each watch event; bookmarks and errors are handled here.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from otel_vmi_hv.backoff import Backoff
from otel_vmi_hv.sources.list_stream import ListBody

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
LIST_READ_TIMEOUT = 60.0
MIN_WATCH_SECONDS = 1.0
MAX_LINE_BYTES = 16 * 1024 * 1024
SILENCE_TIMEOUT = 180.0
RELIST_SPREAD = 10.0
PAGE_SIZE = 100
CHUNK_BYTES = 65536  # read from list and watch responses at a time
WATCH_TIMEOUT_RANGE = (240, 360)  # seconds; spread so a fleet of agents does not re-watch in step
BACKOFF = Backoff(initial=0.5, maximum=30.0)
# What one list-and-watch cycle ended with, when it was not a failure (run and _cycle).
WATCHED = "watched"  # a stream ran and ended: the failure count starts again
RESUMED = "resumed"  # expired, silent or stopping: go on at once, the failure count kept


class ResourceExpired(Exception):
    """The resume point (resourceVersion or continue token) is gone: a relist is needed."""


class WatchLineTooLong(Exception):
    """A watch line grew past the cap without a newline."""


class WatchSilent(Exception):
    """Neither an event nor a bookmark arrived within the silence timeout."""


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
        if not self.group:
            return f"/api/{self.version}/{self.plural}"
        return f"/apis/{self.group}/{self.version}/{self.plural}"

    def hints(self) -> dict[int, str]:
        """What an operator should do about the API answers that are not transient."""
        return {
            401: " (the agent's credentials were refused: check the service account token or KUBECONFIG)",
            403: f" (the service account may not list {self.name}: it needs get, list and watch on them"
            " cluster-wide; see config/kubernetes/clusterrole.yaml)",
            404: f" (no {self.name} resource: is "
            + ("KubeVirt" if self.group == "kubevirt.io" else "this API")
            + " installed in this cluster?)",
        }


# The client's parameter names, as the loop uses them, and their names in the query string.
_QUERY_NAMES = {
    "label_selector": "labelSelector",
    "field_selector": "fieldSelector",
    "limit": "limit",
    "resource_version": "resourceVersion",
    "resource_version_match": "resourceVersionMatch",
    "_continue": "continue",
    "watch": "watch",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
}


def get_collection(api_client: Any, resource: Resource, timeout: tuple[float, float], **params: Any) -> Any:
    """GET a list or watch of ``resource``; the unread urllib3 response of a 2xx answer, else ApiException.

    Through the client's public ``ApiClient`` (its authentication with token refresh, TLS, proxy and
    retry settings), not a generated API class: importing ``CoreV1Api`` for its ``list_node`` alone
    costs 21 MiB resident (hundreds of validated methods and the models they name).
    """
    from kubernetes.client.exceptions import ApiException

    query = [(_QUERY_NAMES[name], value) for name, value in params.items() if value is not None]
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
    """Receives a resource's state: whole listings, then changes."""

    def relist_started(self) -> None:
        """A listing begins (or begins again after an expired continue token): start collecting."""

    def listed(self, obj: Mapping[str, Any]) -> None:
        """One object of the listing in progress."""

    def relist_done(self) -> None:
        """The listing is complete: what was not listed is gone."""

    def changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """An ADDED, MODIFIED or DELETED watch event."""


@dataclass(frozen=True, slots=True)
class ListWatchOptions:
    label_selector: str | None = None
    field_selector: str | None = None
    page_size: int = PAGE_SIZE
    relist_spread: float = RELIST_SPREAD  # longest random wait before a relist that follows an outage
    silence_timeout: float = SILENCE_TIMEOUT
    max_line_bytes: int = MAX_LINE_BYTES
    watch_timeout_range: tuple[int, int] = WATCH_TIMEOUT_RANGE


@dataclass(slots=True)
class _Callbacks:
    on_synced: Callable[[], None] = lambda: None
    on_relist: Callable[[], None] = lambda: None
    on_watch_restart: Callable[[str], None] = lambda reason: None
    on_failure: Callable[[int | None, str], None] = lambda status, reason: None
    on_watching: Callable[[], None] = lambda: None
    on_sync: Callable[[float], None] = lambda when: None


class ListWatch:
    """Keeps a handler in step with one resource: list, then watch from the list's version, forever."""

    def __init__(
        self,
        resource: Resource,
        handler: ListWatchHandler,
        api_client: Callable[[], Any],
        options: ListWatchOptions = ListWatchOptions(),
        *,
        on_synced: Callable[[], None] = lambda: None,
        on_relist: Callable[[], None] = lambda: None,
        on_watch_restart: Callable[[str], None] = lambda reason: None,
        on_failure: Callable[[int | None, str], None] = lambda status, reason: None,
        on_watching: Callable[[], None] = lambda: None,
        on_sync: Callable[[float], None] = lambda when: None,
    ) -> None:
        self.resource = resource
        self._handler = handler
        self._api_client = api_client
        self._options = options
        self._callbacks = _Callbacks(on_synced, on_relist, on_watch_restart, on_failure, on_watching, on_sync)
        self._resource_version: str | None = None  # where the watch resumes; None: list first
        self._last_seen: str | None = None  # newest version seen, for a NotOlderThan relist
        self._paginated = False  # the server paginated a list: it has no watch cache for this resource
        self._consistent_next = False  # the last seen version is too old even for a list
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self.last_sync: float | None = None
        self.last_error: str | None = None  # why the last list or watch failed, for `detect`
        self.last_status: int | None = None  # HTTP status of the last failure (None: not an HTTP answer)
        self.synced = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def resource_version(self) -> str | None:
        return self._resource_version

    def start(self, thread_name: str | None = None) -> None:
        self._thread = threading.Thread(
            target=self.run, name=thread_name or f"watch-{self.resource.plural}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop; closing the open stream ends a watch blocked in a read at once."""
        self._stop.set()
        response = self._response
        if response is not None:
            # Shut the socket down rather than close the response: close() waits for the buffered
            # reader's lock, which the watch thread holds until the next event or bookmark arrives
            # (a minute on a quiet node); a shutdown wakes that read at once with end-of-stream.
            sock = getattr(getattr(response, "connection", None), "sock", None)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
                else:
                    response.close()
            except Exception:  # closing a half-dead socket may fail in many ways; it is going anyway
                log.debug("closing the %s watch response failed", self.resource.name, exc_info=True)

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            outcome = self._cycle()
            if outcome == WATCHED:
                failures = 0
            elif isinstance(outcome, tuple) and not self._stop.is_set():
                failures += 1
                self._back_off(failures, *outcome)

    def _cycle(self) -> str | tuple[int | None, str]:
        """(Re)list if needed, then follow one watch stream to its end.

        WATCHED when a stream ran and ended, RESUMED when the loop may go on at once without
        counting a failure (expired, silent, stopping), else the failure's HTTP status and reason.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import ReadTimeoutError

        try:
            if self._resource_version is None:
                if self.synced and not self._spread_relist():
                    return RESUMED
                self.relist()
            opened = time.monotonic()
            try:
                self._watch_once()
            except ReadTimeoutError:
                raise WatchSilent from None
            self._callbacks.on_watch_restart("closed")
            if time.monotonic() - opened < MIN_WATCH_SECONDS:
                # A stream that ends at once (a proxy, a misbehaving server) must not make
                # the agent spin against the API server.
                self._stop.wait(MIN_WATCH_SECONDS)
            return WATCHED
        except ResourceExpired:
            self._expired("410 Gone")
            return RESUMED
        except WatchSilent:
            if not self._stop.is_set():
                log.info(
                    "%s watch brought no event and no bookmark for %.0fs; resuming it",
                    self.resource.name,
                    self._options.silence_timeout,
                )
                self._callbacks.on_watch_restart("silent")
            return RESUMED
        except ApiException as error:
            if error.status == 410 and self._resource_version is not None:
                # Some servers refuse a too-old watch with HTTP 410 instead of an ERROR event.
                self._expired("HTTP 410")
                return RESUMED
            hint = self.resource.hints().get(error.status or 0, "")
            return error.status or None, f"HTTP {error.status} {error.reason}{hint}"
        except WatchLineTooLong as error:
            return None, str(error)
        except Exception as error:  # connection refused/reset, timeouts, bad JSON: all transient
            return None, f"{type(error).__name__}: {error}"

    def _expired(self, how: str) -> None:
        log.info("%s watch position expired (%s); relisting", self.resource.name, how)
        self._resource_version = None
        self._callbacks.on_watch_restart("expired")

    def _back_off(self, failures: int, status: int | None, reason: str) -> None:
        """Report a failed list or watch, then wait before the next attempt (jittered, growing)."""
        self.last_error, self.last_status = reason, status
        self._callbacks.on_failure(status, reason)
        self._callbacks.on_watch_restart("error")
        delay = BACKOFF.delay(failures)
        (log.warning if failures in (1, 5) or failures % 20 == 0 else log.debug)(
            "%s %s from the Kubernetes API failed (%s); retrying in %.1fs (attempt %d)",
            self.resource.name,
            "list" if self._resource_version is None else "watch",
            reason,
            delay,
            failures,
        )
        self._stop.wait(delay)

    def _spread_relist(self) -> bool:
        """Wait a random part of the relist spread; False when stopped meanwhile."""
        delay = random.uniform(0, self._options.relist_spread)  # noqa: S311 - spreading, not security
        if delay > 0:
            log.debug("%s relist in %.1fs (spread)", self.resource.name, delay)
        return not self._stop.wait(delay)

    def _list_params(self) -> dict[str, Any]:
        """The first page's parameters: from the watch cache whenever the server has one."""
        params: dict[str, Any] = {}
        if self._options.label_selector:
            params["label_selector"] = self._options.label_selector
        if self._options.field_selector:
            params["field_selector"] = self._options.field_selector
        if self._consistent_next or (self.synced and self._last_seen is None):
            params["limit"] = self._options.page_size  # a consistent read, from etcd, paginated
        elif self._last_seen is None:
            params["resource_version"] = "0"
            params["limit"] = self._options.page_size  # ignored by the watch cache
        else:
            params["resource_version"] = self._last_seen
            params["resource_version_match"] = "NotOlderThan"
            if self._paginated:  # no watch cache for this resource: etcd is read anyway, in pages
                params["limit"] = self._options.page_size
        return params

    def relist(self) -> None:
        """List the whole collection (every page) into the handler."""
        from kubernetes.client.exceptions import ApiException

        api_client = self._api_client()
        first = self._list_params()
        params = dict(first)
        self._handler.relist_started()
        while True:
            try:
                response = get_collection(
                    api_client, self.resource, (CONNECT_TIMEOUT, LIST_READ_TIMEOUT), **params
                )
            except ApiException as error:
                if error.status == 410 and "_continue" in params:
                    log.info("%s list continue token expired; restarting the list", self.resource.name)
                    params = dict(first)
                    self._handler.relist_started()
                    continue
                if error.status == 410 and "resource_version_match" in first:
                    # Older than anything the server keeps: only a consistent read can answer.
                    log.info("%s version %s too old to list from; listing afresh", self.resource.name, first)
                    self._consistent_next = True
                    first = self._list_params()
                    params = dict(first)
                    self._handler.relist_started()
                    continue
                raise
            metadata = self._list_page(response)
            token = metadata.get("continue") or None
            if not token:
                break
            self._paginated = True
            params = {k: v for k, v in first.items() if not k.startswith("resource_version")}
            params["_continue"] = token
            params["limit"] = self._options.page_size
        self._handler.relist_done()
        version = metadata.get("resourceVersion")
        self._resource_version = str(version) if version else None
        self._last_seen = self._resource_version or self._last_seen
        self._consistent_next = False
        self.last_sync = time.time()
        self.last_error = self.last_status = None
        self._callbacks.on_sync(self.last_sync)
        self._callbacks.on_relist()
        if not self.synced:
            self.synced = True
            self._callbacks.on_synced()

    def _list_page(self, response: Any) -> Mapping[str, Any]:
        """Hand one page's items to the handler as they are decoded; the page's list metadata."""
        body = ListBody(response.stream(amt=CHUNK_BYTES, decode_content=True), f"{self.resource.name} list")
        try:
            for item in body.items():
                if isinstance(item, Mapping):
                    self._handler.listed(item)
                del item  # not held while the next one is decoded
        except BaseException:
            response.close()  # unread bytes must not go back to the pool with the connection
            raise
        finally:
            response.release_conn()
        return body.metadata

    def _watch_once(self) -> None:
        timeout = random.randint(*self._options.watch_timeout_range)  # noqa: S311 - spreading, not security
        params: dict[str, Any] = {}
        if self._options.label_selector:
            params["label_selector"] = self._options.label_selector
        if self._options.field_selector:
            params["field_selector"] = self._options.field_selector
        # The read timeout is the silence timeout: bookmarks arrive about every minute, so a read
        # that waits longer than that is a dead connection, not a quiet resource.
        response = get_collection(
            self._api_client(),
            self.resource,
            (CONNECT_TIMEOUT, self._options.silence_timeout),
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self._resource_version,
            timeout_seconds=timeout,
            **params,
        )
        self._response = response
        self._callbacks.on_watching()
        try:
            for event in watch_events(response, self._options.max_line_bytes, self.resource.name):
                if self._stop.is_set():
                    return
                self._apply(event)
        finally:
            self._response = None
            response.release_conn()

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            return
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise ResourceExpired(str(obj.get("message", "")))
            raise RuntimeError(
                f"watch error event: {obj.get('code')} {obj.get('reason')} {obj.get('message')}"
            )
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._handler.changed(kind, obj)
        elif kind != "BOOKMARK":
            log.debug("ignoring %s watch event of type %r", self.resource.name, kind)
        metadata = obj.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        if isinstance(version, str) and version:
            self._resource_version = self._last_seen = version
        self.last_sync = time.time()
        self._callbacks.on_sync(self.last_sync)


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
            if end < 0:
                scanned = len(buffer)
                if scanned > max_line_bytes:
                    log.warning(
                        "%s watch line longer than %d bytes; dropping it and restarting the watch",
                        what,
                        max_line_bytes,
                    )
                    raise WatchLineTooLong(f"watch line longer than {max_line_bytes} bytes")
                break
            if end > max_line_bytes:
                log.warning(
                    "%s watch line of %d bytes exceeds the %d-byte cap; restarting the watch",
                    what,
                    end,
                    max_line_bytes,
                )
                raise WatchLineTooLong(f"watch line of {end} bytes, longer than {max_line_bytes}")
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            scanned = 0
            if line.strip():
                event = json.loads(line)
                if isinstance(event, Mapping):
                    yield event
    if buffer.strip():
        event = json.loads(bytes(buffer))
        if isinstance(event, Mapping):
            yield event
