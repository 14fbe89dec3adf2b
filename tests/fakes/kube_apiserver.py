"""A protocol-faithful fake Kubernetes API server for KubeVirt VMIs, Nodes, Pods, Events and the KubeVirt CR.

Why this exists
---------------
No real kube-apiserver can run in this test environment, yet the agent talks to the API through the real
``kubernetes`` Python client: its ``ApiClient`` (``param_serialize`` and ``call_api``, no generated API
class) sends every request (lists and watches: ``otel_vmi_hv/sources/list_watch.py``, also for the launcher
pods; the Events it writes: ``emulation/vmi_events.py``), with the client's own urllib3 retries turned
off; the agent decodes list bodies item by item as they arrive
(``sources/list_stream.py``) and reads watch streams line by line itself (not ``kubernetes.watch.Watch``).
A mock at the Python level would only prove that the agent calls the methods we expected; it would not
prove that the agent survives what a real API server does on the wire: chunked JSON-lines watch streams,
``410 Expired`` for stale resourceVersions, paginated lists served from one consistent snapshot, selector
transitions delivered as synthetic ``DELETED``/``ADDED`` events, bookmarks, dropped connections, restarts
on the same port.  This module reproduces those behaviours over real HTTP on 127.0.0.1 so that the client
library, urllib3 and the agent are exercised end to end.

Five resources are served: ``virtualmachineinstances`` and ``kubevirts`` in group ``kubevirt.io``, version
``v1`` (namespaced), the core ``nodes`` (cluster-scoped, under ``/api/v1``; field selector ``metadata.name``
and ``spec.unschedulable``), the core ``pods`` (namespaced; field selector ``metadata.name``,
``spec.nodeName`` and ``status.phase``) and the core ``events`` (namespaced; created, replaced and
merge-patched over HTTP, as the agent's one write permission allows). They share one store and one
resourceVersion sequence, as they share etcd. :meth:`FakeKubeAPIServer.forbid` answers one resource with the
real 403 message (RBAC missing). The behaviours copied from the real server (k8s.io/apiserver, cacher + etcd3
store) are:

* resourceVersions are a single global, monotonically increasing integer rendered as a string (an etcd
  revision); every create/update/delete bumps it and stamps ``metadata.resourceVersion``.
* Lists are sorted by etcd key (``<namespace>/<name>``, compared as strings, as etcd does).  ``limit`` +
  ``continue`` pages are all served from the snapshot at the first page's resourceVersion; a continue token
  whose revision was compacted away yields ``410``/``Expired`` with the real message and an "inconsistent"
  continue token (rv ``-1``) that continues from the latest state, exactly like etcd3's
  ``handleCompactedErrorForPaging``.  ``metadata.continue`` and ``metadata.remainingItemCount`` are omitted
  when empty (they are ``omitempty`` in ``ListMeta``); ``remainingItemCount`` is only set when no selector is
  used, as in the real server.
* Watches follow ``cacheWatcher.convertToWatchEvent``: for each change the watcher's selector is evaluated on
  the old and the new object; old-only matches become ``DELETED`` carrying the *previous* object content
  stamped with the event's resourceVersion; new-only matches become ``ADDED``.
* A watch from a resourceVersion older than the event window answers ``200`` and then a single ``ERROR``
  event whose object is ``Status{code: 410, reason: Expired, message: "too old resource version: X (Y)"}``,
  where ``Y`` is the oldest resourceVersion still servable (the watch cache's ``oldest-1``).
* A watch without resourceVersion, or with ``"0"``, starts with synthetic ``ADDED`` events for the current
  state (sorted by key), then live events.  ``sendInitialEvents=true`` additionally ends the initial burst
  with a ``BOOKMARK`` annotated ``k8s.io/initial-events-end: "true"``.
* Error bodies are ``kind: Status`` objects with the reason/code pairs the real server uses.
* Which store a list reaches follows the cacher's ``shouldDelegateList`` (Kubernetes 1.30, default feature
  gates): ``resourceVersion=0`` is answered from the watch cache and ``limit`` is IGNORED there (the whole
  list, no continue token); a non-zero resourceVersion without ``limit`` is answered from the watch cache;
  an unset resourceVersion, ``resourceVersionMatch=Exact``, a continue token, or a non-zero
  resourceVersion WITH ``limit`` read etcd (paginated).  Every request is recorded with that cost
  (``consistent_list``, ``cached_list``, ``watch``; see :func:`read_kind` and
  :meth:`FakeKubeAPIServer.request_kinds`).  ``watch_cache=False`` models ``--watch-cache=false``.
* :meth:`FakeKubeAPIServer.restart` is an API server restart: the store survives (etcd), but the new watch
  cache starts at the current revision, so resuming an older watch gets 410.

Deliberate simplifications (documented so nobody relies on them by accident): apart from the Events' writes,
only ``GET`` is served over HTTP (the test drives writes through Python methods); a watch from a *future*
resourceVersion simply waits for it; the ``fieldSelector`` supports ``metadata.name`` and
``metadata.namespace`` only for the CRDs (all a CRD supports without ``selectableFields``); ``create`` keeps a
caller-supplied ``metadata.uid`` so fixtures can stay correlated with their launcher pod and domain XML (the
real server always generates one).

Findings about the installed client (kubernetes 37.0.2, ``kubernetes/watch/watch.py``), kept for tests
that drive ``kubernetes.watch.Watch`` directly against this fake
-----------------------------------------------------------------------------------------
* ``BOOKMARK`` events ARE yielded to the caller, as ``{"type": "BOOKMARK", "object": <raw dict>,
  "raw_object": <raw dict>}``: the object is deliberately not deserialized (it may be incomplete), and
  ``Watch.resource_version`` is updated from ``object.metadata.resourceVersion``.  Callers must skip them.
* ``ERROR`` events are never yielded.  The object is not deserialized; ``obj["code"]`` is read, so an ERROR
  object must be a Status with ``code``.  If ``code == 410`` AND the call had no ``timeout_seconds`` AND this
  is the first 410 since the last successfully yielded event, the client silently re-issues the watch with
  ``resource_version = Watch.resource_version`` (the last RV it saw, or the one passed in).  Against a truly
  stale RV that second request gets 410 again and ``ApiException(status=410, reason="Expired: too old resource
  version: X (Y)")`` is raised -- i.e. TWO watch requests reach the server.  With ``timeout_seconds`` set,
  retries are disabled and the first 410 raises immediately.  Any other ERROR code raises ``ApiException``
  with ``reason="<reason>: <message>"``.  Edge case: if no resourceVersion was ever known (``None``), the
  410 ``break`` makes the generator end *silently* (``_stop`` is set in ``finally``).
* When the server ends a stream cleanly and ``timeout_seconds`` was NOT passed, ``Watch.stream`` re-issues
  the watch from the last seen RV forever (it only stops if that RV is ``None``); with ``timeout_seconds`` it
  returns.  So a server-side clean end is invisible to callers unless they pass ``timeout_seconds``.
* An abrupt connection close (``drop_streams``) surfaces from the generator as
  ``urllib3.exceptions.ProtocolError`` ("Response ended prematurely"), not as ``ApiException``.
* Non-2xx answers to a watch request are raised as ``ApiException`` before any event is read.
* urllib3's default ``Retry(3)`` applies to the client's GETs (the agent's client sets ``Configuration.retries
  = False``: its list-watch backs off by itself): connection refused, read timeouts and connections
  closed before the response headers are retried 3 times (no backoff), so a stopped server
  costs 4 connection attempts and one hung request is transparently retried.  HTTP error statuses are not
  retried (``client_go_retries`` is off by default) EXCEPT 413/429/503 carrying ``Retry-After``: urllib3
  honours the header, sleeps, and retries, so the caller never sees those failures unless all 4 fail.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import json
import math
import re
import select
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from tests.agent_process import DeadlinePassed, wait_until

JsonObj = dict[str, Any]

GROUP: Final = "kubevirt.io"
VERSION: Final = "v1"
PLURAL: Final = "virtualmachineinstances"
SINGULAR: Final = "virtualmachineinstance"
KIND: Final = "VirtualMachineInstance"
LIST_KIND: Final = "VirtualMachineInstanceList"
API_VERSION: Final = f"{GROUP}/{VERSION}"


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One served collection: where it lives in the URL space and what its objects are called."""

    group: str  # "" for the core group, served under /api/v1
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    # Fields a fieldSelector may name: metadata.name and metadata.namespace for CRDs without
    # selectableFields; the built-in resources add a few of their own.
    fields: frozenset[str]
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """``<plural>.<group>``, as in the server's messages and RBAC rules (just ``<plural>`` for core)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def prefix(self) -> str:
        """Start of this resource's store keys: ``<plural>/`` (then ``<namespace>/`` if namespaced)."""
        return f"{self.plural}/"

    def key(self, namespace: str, name: str) -> str:
        return f"{self.plural}/{namespace}/{name}" if self.namespaced else f"{self.plural}/{name}"


_CRD_FIELDS: Final = frozenset({"metadata.name", "metadata.namespace"})
VMI_RESOURCE: Final = ResourceType(GROUP, VERSION, PLURAL, SINGULAR, KIND, True, _CRD_FIELDS, ("vmi", "vmis"))
NODE_RESOURCE: Final = ResourceType(
    "", "v1", "nodes", "node", "Node", False, frozenset({"metadata.name", "spec.unschedulable"}), ("no",)
)
KUBEVIRT_RESOURCE: Final = ResourceType(
    GROUP, VERSION, "kubevirts", "kubevirt", "KubeVirt", True, _CRD_FIELDS, ("kv", "kvs")
)
# Some of the fields the real server selects pods by (pkg/registry/core/pod: PodToSelectableFields).
POD_RESOURCE: Final = ResourceType(
    "",
    "v1",
    "pods",
    "pod",
    "Pod",
    True,
    frozenset({"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"}),
    ("po",),
)
# Core v1 Events: the one resource the fake accepts writes for (POST, PUT, PATCH), as the agent's only
# write permission is on events; a write of anything else is refused with 405.
EVENT_RESOURCE: Final = ResourceType(
    "",
    "v1",
    "events",
    "event",
    "Event",
    True,
    frozenset(
        {"metadata.name", "metadata.namespace", "involvedObject.name", "involvedObject.uid", "reason", "type"}
    ),
    ("ev",),
)
RESOURCES: Final = (VMI_RESOURCE, NODE_RESOURCE, KUBEVIRT_RESOURCE, POD_RESOURCE, EVENT_RESOURCE)
WRITE_VERBS: Final = {"POST": "create", "PUT": "update", "PATCH": "patch"}
_RESOURCE_BY_KIND: Final = {r.kind: r for r in RESOURCES}

# How the real server answers a GET on a collection (k8s.io/apiserver's cacher in front of etcd3, as
# in Kubernetes 1.30 with the default feature gates): what the agent is charged with, per request.
CONSISTENT_LIST: Final = "consistent_list"  # read from etcd (a quorum read, or continued / exact pages)
CACHED_LIST: Final = "cached_list"  # answered from the watch cache, etcd untouched
WATCH: Final = "watch"


def read_kind(verb: str, params: Mapping[str, str]) -> str | None:
    """Which store a list or watch reaches, by the rules of the cacher's ``shouldDelegateList``.

    ``resourceVersion=0`` is served from the watch cache and ``limit`` is ignored there; a non-zero
    resourceVersion without ``limit`` (match unset or ``NotOlderThan``) is served from the cache once
    it has caught up; a continue token, ``resourceVersionMatch=Exact``, an unset resourceVersion
    (consistent read) or a non-zero one with ``limit`` go to etcd.
    """
    if verb == "watch":
        return WATCH
    if verb != "list":
        return None
    rv = params.get("resourceVersion", "")
    if params.get("continue") or params.get("resourceVersionMatch") == "Exact" or rv == "":
        return CONSISTENT_LIST
    if rv == "0" or not params.get("limit") or params.get("limit") == "0":
        return CACHED_LIST
    return CONSISTENT_LIST


ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"
BOOKMARK: Final = "BOOKMARK"
ERROR: Final = "ERROR"

INITIAL_EVENTS_END_ANNOTATION: Final = "k8s.io/initial-events-end"

# Messages copied from k8s.io/apiserver/pkg/storage/etcd3/store.go so that agent code matching on them
# behaves the same against the fake and a real server.
CONTINUE_EXPIRED_MESSAGE: Final = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list."
)

_CONTINUE_TOKEN_VERSION: Final = "meta.k8s.io/v1"
_REASONS: Final[Mapping[int, tuple[str, str]]] = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "forbidden: the fake API server was told to refuse this request"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    409: ("Conflict", "the object has been modified; please apply your changes to the latest version"),
    410: ("Gone", "the requested resource is no longer available"),
    422: ("Invalid", "the request is invalid"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
    500: (
        "InternalError",
        'an error on the server ("injected fault") has prevented the request from succeeding',
    ),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: (
        "Timeout",
        "the server was unable to return a response in the time allotted, but may still be "
        "processing the request",
    ),
}


# ----------------------------------------------------------------------------------------------------
# Selectors
# ----------------------------------------------------------------------------------------------------


class SelectorError(ValueError):
    """A label or field selector the real API server would reject with 400 BadRequest."""


_LABEL_NAME_RE: Final = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE_RE: Final = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Characters that end an identifier in k8s.io/apimachinery/pkg/labels/selector.go's lexer.
_SPECIAL_CHARS: Final = frozenset("!=<>(),")
_KEYWORDS: Final = frozenset({"in", "notin"})


def _validate_label_key(key: str) -> None:
    """Reject keys that are not qualified names, as ``validation.IsQualifiedName`` does on the server."""
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        raise SelectorError(f"invalid label key {key!r}: prefix must be a DNS-1123 subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME_RE.match(name):
        raise SelectorError(
            f"invalid label key {key!r}: name part must consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )


def _validate_label_value(value: str) -> None:
    """Reject values that are not valid label values, as the server's selector parser does."""
    if len(value) > 63 or not _LABEL_VALUE_RE.match(value):
        raise SelectorError(
            f"invalid label value: {value!r}: a valid label must be an empty string or "
            "consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character"
        )


def _lex_selector(text: str) -> list[tuple[str, str]]:
    """Split a label selector into (kind, text) tokens; kind is ``"id"``, ``"kw"`` or the operator itself.

    A hand-written lexer (rather than ``str.split``) because commas inside ``in (a,b)`` must not split
    requirements and because ``a!=b`` has no spaces; this mirrors the real lexer's token classes.
    """
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith(("==", "!="), i):
            tokens.append((text[i : i + 2], text[i : i + 2]))
            i += 2
        elif ch in _SPECIAL_CHARS:
            tokens.append((ch, ch))
            i += 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _SPECIAL_CHARS:
                j += 1
            word = text[i:j]
            tokens.append(("kw" if word in _KEYWORDS else "id", word))
            i = j
    return tokens


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ANDed term of a label selector, with the real server's matching semantics.

    ``!=`` and ``notin`` match objects that do not carry the label at all; ``gt``/``lt`` compare integers
    and never match a non-integer value.
    """

    key: str
    operator: str  # "exists", "!exists", "=", "!=", "in", "notin", "gt", "lt"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Return whether a label map satisfies this requirement."""
        present = self.key in labels
        op = self.operator
        if op == "exists":
            return present
        if op == "!exists":
            return not present
        if op in ("=", "in"):
            return present and labels[self.key] in self.values
        if op in ("!=", "notin"):
            return not present or labels[self.key] not in self.values
        if not present:
            return False
        try:
            actual = int(labels[self.key])
        except ValueError:
            return False
        (bound,) = self.values
        return actual > int(bound) if op == "gt" else actual < int(bound)


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed ``labelSelector`` query parameter: all requirements must match (comma means AND)."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse the string syntax accepted by ``labels.Parse`` in k8s.io/apimachinery.

        Grammar: ``requirement (',' requirement)*`` with requirement one of ``key``, ``!key``,
        ``key (=|==|!=) value``, ``key (in|notin) (v1, v2, ...)``, ``key (>|<) integer``.
        Raises :class:`SelectorError` on anything the real parser rejects (the server answers 400).
        """
        tokens = _lex_selector(text)
        if not tokens:
            return cls()
        reqs: list[Requirement] = []
        pos = 0
        while True:
            req, pos = cls._parse_requirement(tokens, pos)
            reqs.append(req)
            if pos == len(tokens):
                return cls(tuple(reqs))
            if tokens[pos][0] != ",":
                raise SelectorError(f"found '{tokens[pos][1]}', expected: ',' or end of string")
            pos += 1
            if pos == len(tokens):
                raise SelectorError("found '', expected: identifier after ','")

    @staticmethod
    def _parse_requirement(tokens: list[tuple[str, str]], pos: int) -> tuple[Requirement, int]:
        """Parse one requirement starting at ``pos``; return it and the position after it."""

        def at(i: int) -> tuple[str, str]:
            return tokens[i] if i < len(tokens) else ("end", "")

        kind, text = at(pos)
        if kind == "!":
            key_kind, key = at(pos + 1)
            if key_kind != "id":
                raise SelectorError(f"found '{key}', expected: identifier after '!'")
            _validate_label_key(key)
            return Requirement(key, "!exists"), pos + 2
        if kind != "id":
            raise SelectorError(f"found '{text}', expected: !, identifier, or 'end of string'")
        key = text
        _validate_label_key(key)
        pos += 1
        op_kind, op_text = at(pos)
        if op_kind in ("end", ","):
            return Requirement(key, "exists"), pos
        pos += 1
        if op_kind in ("=", "==", "!="):
            value_kind, value = at(pos)
            if value_kind in ("end", ","):
                value = ""
            elif value_kind == "id":
                pos += 1
            else:
                raise SelectorError(f"found '{value}', expected: identifier")
            _validate_label_value(value)
            return Requirement(key, "!=" if op_kind == "!=" else "=", frozenset({value})), pos
        if op_kind in (">", "<"):
            value_kind, value = at(pos)
            if value_kind != "id":
                raise SelectorError(f"found '{value}', expected: integer")
            try:
                int(value)
            except ValueError:
                raise SelectorError(
                    f"for 'Gt', 'Lt' operators, the value must be an integer: {value!r}"
                ) from None
            return Requirement(key, "gt" if op_kind == ">" else "lt", frozenset({value})), pos + 1
        if op_kind == "kw":
            if at(pos)[0] != "(":
                raise SelectorError(f"found '{at(pos)[1]}', expected: '('")
            pos += 1
            values: set[str] = set()
            expect_value = True
            while True:
                tok_kind, tok = at(pos)
                if tok_kind == ")":
                    if expect_value and values:
                        values.add("")  # "a in (x,)" is legal and means x or empty, as in the real parser
                    pos += 1
                    break
                if tok_kind == ",":
                    if expect_value:
                        values.add("")
                    expect_value = True
                elif tok_kind == "id" and expect_value:
                    _validate_label_value(tok)
                    values.add(tok)
                    expect_value = False
                else:
                    raise SelectorError(f"found '{tok}', expected: ',', ')' or identifier")
                pos += 1
            if not values:
                raise SelectorError("for 'in', 'notin' operators, values set can't be empty")
            return Requirement(key, op_text, frozenset(values)), pos
        raise SelectorError(f"found '{op_text}', expected: =, !=, ==, in, notin, >, <")

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Return whether a label map satisfies every requirement (the empty selector matches all)."""
        return all(req.matches(labels) for req in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


_SUPPORTED_FIELDS: Final = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """A parsed ``fieldSelector``: terms ``field=value``, ``field==value`` or ``field!=value``, ANDed.

    Only ``metadata.name`` and ``metadata.namespace`` exist for a CRD without ``selectableFields``; anything
    else is rejected with the real server's message ``field label not supported: <field>``.
    """

    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, negated, value)

    @classmethod
    def parse(cls, text: str, supported: Collection[str] = _SUPPORTED_FIELDS) -> FieldSelector:
        """Parse like ``fields.ParseSelector``: split on unescaped commas, backslash escapes in values."""
        if not text.strip():
            return cls()
        terms: list[tuple[str, bool, str]] = []
        for raw in _split_unescaped(text, ","):
            term = raw.strip()
            for i in range(len(term)):
                op = next((o for o in ("!=", "==", "=") if term.startswith(o, i)), None)
                if op is not None:
                    name, value = term[:i].strip(), _unescape_field_value(term[i + len(op) :].strip())
                    break
            else:
                raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
            if name not in supported:
                raise SelectorError(f"field label not supported: {name}")
            terms.append((name, op == "!=", value))
        return cls(tuple(terms))

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """Return whether an object's metadata satisfies every term."""
        for name, negated, value in self.terms:
            section, _, attribute = name.partition(".")
            if section != "metadata":
                continue  # other fields are checked by _Filter.matches on the whole object
            actual = metadata.get(attribute, "")
            if (actual == value) == negated:
                return False
        return True

    def __bool__(self) -> bool:
        return bool(self.terms)


def _split_unescaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` unless preceded by a backslash (the escape is kept for later unescaping)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unescape_field_value(value: str) -> str:
    """Undo the ``\\\\``, ``\\,`` and ``\\=`` escapes of field selector values."""
    return re.sub(r"\\(.)", r"\1", value)


@dataclass(frozen=True, slots=True)
class _Filter:
    """Everything that decides whether an object belongs to a request: namespace scope plus selectors."""

    namespace: str | None = None
    labels: LabelSelector = field(default_factory=LabelSelector)
    fields: FieldSelector = field(default_factory=FieldSelector)
    resource: ResourceType = VMI_RESOURCE

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Return whether ``obj`` is visible to this request."""
        if obj.get("kind") != self.resource.kind:
            return False
        metadata = obj.get("metadata") or {}
        for name, negated, value in self.fields.terms:
            section, _, attribute = name.partition(".")
            if section == "metadata":
                continue  # FieldSelector.matches below
            found = (obj.get(section) or {}).get(attribute)
            if name == "spec.unschedulable":
                actual = str(bool(found)).lower()
            else:
                actual = "" if found is None else str(found)
            if (actual == value) == negated:
                return False
        if self.namespace is not None and metadata.get("namespace") != self.namespace:
            return False
        if self.fields and not self.fields.matches(metadata):
            return False
        return not self.labels or self.labels.matches(metadata.get("labels") or {})

    @property
    def has_selectors(self) -> bool:
        """Whether a selector narrows the result (the server then omits ``remainingItemCount``)."""
        return bool(self.labels) or bool(self.fields)


# ----------------------------------------------------------------------------------------------------
# Store internals
# ----------------------------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _loads_obj(text: str) -> JsonObj:
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise TypeError("expected a JSON object")
    return obj


def _clone(obj: JsonObj) -> JsonObj:
    """Deep-copy a JSON object; a JSON round trip is several times faster than ``copy.deepcopy`` here."""
    return _loads_obj(_dumps(obj))


def _top_level_copy(obj: Mapping[str, Any]) -> JsonObj:
    """Copy the top dict and ``metadata`` (the parts the store stamps) and default apiVersion/kind; nested
    values stay shared with the caller until :meth:`FakeKubeAPIServer._commit` encodes them.
    """
    new = dict(obj)
    new.setdefault("kind", KIND)
    new.setdefault("apiVersion", _resource_of(new).api_version)
    new["metadata"] = dict(new.get("metadata") or {})
    return new


def _with_rv(obj: JsonObj, rv: int) -> JsonObj:
    """Return ``obj`` with another resourceVersion; shares all but the two top dicts (never mutated)."""
    copy_ = dict(obj)
    metadata = dict(copy_.get("metadata") or {})
    metadata["resourceVersion"] = str(rv)
    copy_["metadata"] = metadata
    return copy_


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge_patch(target: JsonObj, patch: Mapping[str, Any]) -> None:
    """RFC 7386 JSON merge patch (what a strategic merge patch is for the fields of an Event)."""
    for name, value in patch.items():
        if value is None:
            target.pop(name, None)
        elif isinstance(value, Mapping) and isinstance(target.get(name), dict):
            _merge_patch(target[name], value)
        else:
            target[name] = json.loads(_dumps(value))


def _resource_of(obj: Mapping[str, Any]) -> ResourceType:
    """The served resource an object belongs to, by its kind (VMIs when it has none)."""
    kind = obj.get("kind") or KIND
    resource = _RESOURCE_BY_KIND.get(kind)
    if resource is None:
        raise ValueError(f"kind {kind!r} is not served by the fake (only {sorted(_RESOURCE_BY_KIND)})")
    return resource


def _key(namespace: str, name: str, resource: ResourceType = VMI_RESOURCE) -> str:
    """The etcd-style key ``<plural>/<namespace>/<name>``; lists are sorted by it as strings, like etcd."""
    return resource.key(namespace, name)


def _encode_line(event_type: str, obj: JsonObj) -> bytes:
    return (_dumps({"type": event_type, "object": obj}) + "\n").encode()


@dataclass(slots=True)
class _Event:
    """One committed change.  ``obj`` is the state after it (for DELETED: the last state stamped with the
    deletion RV), ``prev`` the state before it (None for ADDED).  Stored dicts are never mutated, so events,
    snapshots and the live store share them freely; encoded lines are cached because every watcher of the
    same kind sends the same bytes.
    """

    rv: int
    type: str
    key: str
    obj: JsonObj
    prev: JsonObj | None
    lines: dict[str, bytes] = field(default_factory=dict)

    def line(self, as_type: str) -> bytes:
        """The JSON line for this change delivered to a watcher as ``as_type`` (may differ from ``type``)."""
        cached = self.lines.get(as_type)
        if cached is None:
            if as_type == DELETED and self.type != DELETED:
                # Selector transition: real server sends the previous content with the event's RV.
                assert self.prev is not None
                obj = _with_rv(self.prev, self.rv)
            else:
                obj = self.obj
            cached = _encode_line(as_type, obj)
            self.lines[as_type] = cached
        return cached


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The whole store at one resourceVersion, sorted by key, for consistent paginated lists."""

    rv: int
    keys: list[str]
    objs: list[JsonObj]


class _Watcher:
    """Per-connection event queue.  Writers append under the store lock and notify; the connection's own
    thread filters, encodes and writes, so a slow client never slows down the writer or other watchers.
    """

    def __init__(self, flt: _Filter, sock: socket.socket, bookmarks: bool) -> None:
        self.filter = flt
        self.sock = sock
        self.bookmarks = bookmarks
        self.cond = threading.Condition()
        self.queue: deque[_Event] = deque()
        self.state: str | None = None  # None: open, "end": finish cleanly, "drop": abort the connection
        self.bookmark_requested = False
        self.after_rv = 0
        self.last_rv = 0

    def push(self, event: _Event, limit: int | None) -> bool:
        """Queue an event; False when the queue is over ``limit`` (the real server then ends the watch)."""
        with self.cond:
            if limit is not None and len(self.queue) >= limit:
                return False
            self.queue.append(event)
            self.cond.notify()
        return True

    def close(self, mode: str) -> None:
        """End this watch: ``"end"`` finishes the HTTP response properly, ``"drop"`` cuts the connection."""
        with self.cond:
            if self.state is None or mode == "drop":
                self.state = mode
            self.cond.notify()
        if mode == "drop":
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def request_bookmark(self) -> None:
        with self.cond:
            self.bookmark_requested = True
            self.cond.notify()

    def convert(self, event: _Event) -> bytes | None:
        """Apply ``cacheWatcher.convertToWatchEvent``: compare the selector on old and new object."""
        cur = event.type != DELETED and self.filter.matches(event.obj)
        old = event.prev is not None and self.filter.matches(event.prev)
        if cur:
            return event.line(MODIFIED if old else ADDED)
        if old:
            return event.line(DELETED)
        return None


@dataclass(slots=True)
class _Fault:
    """A pending injected fault: ``kind`` is "fail" or "hang"; ``verbs`` limits it to some request kinds."""

    kind: str
    remaining: int
    status: int = 500
    verbs: frozenset[str] | None = None
    retry_after: int | None = None
    message: str | None = None
    plurals: frozenset[str] | None = None  # only requests for these resources (None: any)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request as received, for assertions on what the agent asked for.

    ``verb`` is ``list``, ``watch``, ``get``, ``discovery``, ``version``, ``health`` or ``unknown``.
    """

    method: str
    path: str
    query: str
    params: Mapping[str, str]
    verb: str
    namespace: str | None
    authorization: str | None
    resource: str | None = None  # plural of the collection asked for (None: discovery, health, ...)
    kind: str | None = None  # consistent_list, cached_list or watch (see read_kind); None otherwise


class _ApiError(Exception):
    """Raised inside request handling to answer with a Status body."""

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        reason: str | None = None,
        details: JsonObj | None = None,
        continue_token: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.details = details
        self.continue_token = continue_token


def status_object(
    code: int,
    message: str | None = None,
    *,
    reason: str | None = None,
    details: JsonObj | None = None,
    continue_token: str | None = None,
) -> JsonObj:
    """Build a ``metav1.Status`` failure body the way the real server serialises it."""
    default_reason, default_message = _REASONS.get(code, ("Unknown", "unknown error"))
    status: JsonObj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {"continue": continue_token} if continue_token else {},
        "status": "Failure",
        "message": message if message is not None else default_message,
        "reason": reason if reason is not None else default_reason,
    }
    if details is not None:
        status["details"] = details
    status["code"] = code
    return status


def _encode_continue(rv: int, start_key: str) -> str:
    """Encode like ``storage.EncodeContinue``: base64url (no padding) of {"v","rv","start"}."""
    raw = _dumps({"v": _CONTINUE_TOKEN_VERSION, "rv": rv, "start": start_key}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    """Decode a continue token; any malformation is a 400, as in ``storage.DecodeContinue``."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise _ApiError(400, f"invalid continue token: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != _CONTINUE_TOKEN_VERSION:
        raise _ApiError(
            400,
            "invalid continue token: continue key is not valid: incorrect encoded start "
            f"resourceVersion (version {_CONTINUE_TOKEN_VERSION})",
        )
    rv, start = data.get("rv"), data.get("start")
    if not isinstance(rv, int) or not isinstance(start, str) or not start or rv == 0 or rv < -1:
        raise _ApiError(
            400,
            "invalid continue token: continue key is not valid: incorrect encoded start "
            f"resourceVersion (version {_CONTINUE_TOKEN_VERSION})",
        )
    return rv, start


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_LAST_CHUNK: Final = b"0\r\n\r\n"
_WRITE_BATCH: Final = 256 * 1024


def _peer_closed(sock: socket.socket) -> bool:
    """True when the client has closed its side (EOF is readable); used to reap idle watches."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


# ----------------------------------------------------------------------------------------------------
# HTTP plumbing
# ----------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its fake, so handlers can reach the store."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeKubeAPIServer) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that went away; that is routine in fault-injection tests."""


class _Handler(BaseHTTPRequestHandler):
    """Routes every request into :meth:`FakeKubeAPIServer._handle`; HTTP/1.1 for keep-alive and chunking."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.fake._track_connection(self.connection, add=True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.fake._track_connection(self.connection, add=False)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815 - names fixed by BaseHTTPRequestHandler

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; requests are recorded in ``FakeKubeAPIServer.requests``."""


@dataclass(frozen=True, slots=True)
class _Route:
    verb: str
    namespace: str | None = None
    name: str | None = None
    resource: ResourceType | None = None


def _collection_path(resource: ResourceType, namespace: str | None = None) -> str:
    base = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
    return f"{base}/namespaces/{namespace}/{resource.plural}" if namespace else f"{base}/{resource.plural}"


_NAME: Final = r"([^/]+)"
_ROUTES: Final = tuple(
    (
        resource,
        re.compile(
            re.escape(_collection_path(resource)).replace(re.escape(resource.plural), "")
            + (rf"(?:namespaces/{_NAME}/)?" if resource.namespaced else "")
            + re.escape(resource.plural)
            + rf"(?:/{_NAME})?$"
        ),
    )
    for resource in RESOURCES
)


def _route(path: str, params: Mapping[str, str]) -> _Route:
    """Classify a request path the way the real server's mux would."""
    path = path.rstrip("/") or "/"
    watch = _truthy(params.get("watch"))
    for resource, pattern in _ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        groups = match.groups()
        namespace, name = (groups[0], groups[1]) if resource.namespaced else (None, groups[0])
        if name is None:
            return _Route("watch" if watch else "list", namespace, resource=resource)
        if resource.namespaced and namespace is None:
            break  # /apis/kubevirt.io/v1/kubevirts/<name> does not exist: namespaced objects need one
        return _Route("get", namespace, name, resource)
    if path == "/version":
        return _Route("version")
    if path in ("/healthz", "/livez", "/readyz"):
        return _Route("health")
    if path in ("/api", "/api/v1", "/apis", f"/apis/{GROUP}", f"/apis/{GROUP}/{VERSION}"):
        return _Route("discovery", name=path)
    return _Route("unknown")


# ----------------------------------------------------------------------------------------------------
# The fake server
# ----------------------------------------------------------------------------------------------------


class FakeKubeAPIServer:
    """Fake kube-apiserver serving KubeVirt VMIs over real HTTP on 127.0.0.1 (see module docstring).

    All public methods are thread-safe.  Use as a context manager, or call :meth:`start` / :meth:`close`.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        token: str | None = None,
        history_window: int = 10_000,
        bookmark_interval: float = 1.0,
        initial_resource_version: int = 1000,
        too_large_rv_wait: float = 0.5,
        snapshot_cache_size: int = 8,
        max_watch_queue: int | None = None,
        liveness_interval: float = 0.25,
        request_log_size: int = 10_000,
        watch_cache: bool = True,
        list_metadata_last: bool = False,
    ) -> None:
        """Configure the fake; nothing listens until :meth:`start` (or ``with``).

        ``history_window`` is how many events are kept for watch resumption and snapshot reconstruction
        (older RVs get 410).  ``bookmark_interval`` paces BOOKMARKs for watches that allow them.
        ``too_large_rv_wait`` is how long a list with a future resourceVersion waits before the real
        server's 504 "Too large resource version".  ``max_watch_queue`` (None: unbounded) ends a watch whose
        client lags that many events behind, as the real server does with slow watchers.
        ``liveness_interval`` is how often an idle watch checks whether its client hung up.
        ``watch_cache`` False models a server with the watch cache disabled (``--watch-cache=false``):
        ``resourceVersion=0`` lists are then paginated like any other.  ``list_metadata_last`` writes a
        list's ``metadata`` (resourceVersion, continue token) after its ``items``: JSON objects are
        unordered, and a client must not depend on the order the real server happens to use.
        """
        if history_window < 1:
            raise ValueError("history_window must be >= 1")
        self.token = token
        self.history_window = history_window
        self.bookmark_interval = bookmark_interval
        self.too_large_rv_wait = too_large_rv_wait
        self.snapshot_cache_size = snapshot_cache_size
        self.max_watch_queue = max_watch_queue
        self.liveness_interval = liveness_interval
        self.watch_cache = watch_cache
        self.list_metadata_last = list_metadata_last
        self._forbidden: set[str] = set()

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._objects: dict[str, JsonObj] = {}
        self._rv = initial_resource_version
        self._floor = initial_resource_version  # every event with rv > floor is in history
        self._history: list[_Event] = []
        self._hstart = 0
        self._snapshots: OrderedDict[int, _Snapshot] = OrderedDict()
        self._watchers: set[_Watcher] = set()
        self._faults: deque[_Fault] = deque()
        self._requests: deque[RecordedRequest] = deque(maxlen=request_log_size)
        self._verb_counts: dict[str, int] = {}

        self._server_lock = threading.Lock()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = port
        self._serving = False
        self._conns: set[socket.socket] = set()
        self._hung_release = threading.Event()

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> FakeKubeAPIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Listen (again) on 127.0.0.1; after :meth:`stop`, rebind the SAME port like a restarted server.

        The store and the event history survive a stop/start, as etcd survives an apiserver restart.
        """
        with self._server_lock:
            if self._server is not None:
                return
            server = _HTTPServer(("127.0.0.1", self._port), self)
            self._port = server.server_address[1]
            with self._lock:
                self._serving = True
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-kube-apiserver:{self._port}",
                daemon=True,
            )
            self._server, self._thread = server, thread
            thread.start()

    def stop(self) -> None:
        """Take the listener down: new connections are refused, open ones (watches, keep-alive, hung
        requests) are cut.  The port is kept for :meth:`start`.
        """
        with self._server_lock:
            server, thread = self._server, self._thread
            if server is None:
                return
            with self._lock:
                self._serving = False
                watchers = list(self._watchers)
                conns = list(self._conns)
                self._hung_release.set()
                self._hung_release = threading.Event()
                self._notify()
            for watcher in watchers:
                watcher.close("drop")
            self._shutdown_accept_loop(server)
            server.server_close()
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            if thread is not None:
                thread.join(timeout=5)
            self._server = self._thread = None

    def _shutdown_accept_loop(self, server: _HTTPServer) -> None:
        """``server.shutdown()`` without waiting out ``serve_forever``'s poll interval.

        The loop only notices the shutdown flag when ``select`` returns, so we connect to ourselves to wake
        it (such connections are cut at once because ``_serving`` is already false).  The poke is repeated
        because the first one can win the race against the flag being set.
        """
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self._port), timeout=1).close()
            stopper.join(0.01)

    def close(self) -> None:
        """Stop for good (alias of :meth:`stop`, for symmetry with context-manager use)."""
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the listener is up."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The TCP port (stable across stop/start)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL for clients, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._port}"

    def write_kubeconfig(self, path: str | Path, token: str | None = None) -> Path:
        """Write a kubeconfig for this server and return its path.

        ``token`` defaults to the server's own token (if any); pass another one to test 401 handling.
        JSON is valid YAML, so no YAML library is needed on this side.
        """
        token = token if token is not None else self.token
        user: JsonObj = {"token": token} if token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}
            ],
            "current-context": "fake",
            "preferences": {},
        }
        out = Path(path)
        out.write_text(json.dumps(config, indent=2) + "\n")
        return out

    # ---------------------------------------------------------------- store API

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion (what a list would return now)."""
        with self._lock:
            return str(self._rv)

    @property
    def oldest_resource_version(self) -> str:
        """The oldest resourceVersion a watch can still resume from; anything older gets 410."""
        with self._lock:
            return str(self._floor)

    def create(self, obj: Mapping[str, Any]) -> JsonObj:
        """Store a new VMI (deep-copied) and emit ADDED; returns the stored copy.

        Like the real server it sets resourceVersion, creationTimestamp and generation=1, ignores any input
        resourceVersion and generates ``metadata.uid`` -- but keeps a caller-supplied uid (see module doc).
        Raises ``ValueError`` if the object already exists.
        """
        new = _top_level_copy(obj)
        resource = _resource_of(new)
        metadata = new["metadata"]
        name = metadata.get("name")
        if not name:
            raise ValueError("metadata.name is required")
        if resource.namespaced:
            namespace = metadata.setdefault("namespace", "default")
        else:
            namespace = ""
            metadata.pop("namespace", None)
        metadata["uid"] = metadata.get("uid") or str(uuid.uuid4())
        metadata["creationTimestamp"] = _now_rfc3339()
        metadata["generation"] = 1
        key = _key(namespace, name, resource)
        with self._lock:
            if key in self._objects:
                raise ValueError(f'{resource.qualified} "{name}" already exists')
            text = self._commit(ADDED, key, new, None)
        return _loads_obj(text)

    def update(self, obj: Mapping[str, Any]) -> JsonObj:
        """Replace an existing VMI and emit MODIFIED; returns the stored copy.

        uid and creationTimestamp are kept from the stored object (immutable on a real server); generation
        is bumped when ``spec`` changed.  Raises ``KeyError`` if the object does not exist.
        """
        new = _top_level_copy(obj)
        resource = _resource_of(new)
        metadata = new["metadata"]
        namespace = metadata.setdefault("namespace", "default") if resource.namespaced else ""
        key = _key(namespace, metadata.get("name", ""), resource)
        with self._lock:
            prev = self._objects.get(key)
            if prev is None:
                raise KeyError(key)
            text = self._commit(MODIFIED, key, self._carry_metadata(prev, new), prev)
        return _loads_obj(text)

    def patch(
        self, namespace: str, name: str, mutate: Callable[[JsonObj], None], *, kind: str = KIND
    ) -> JsonObj:
        """Apply ``mutate`` to a copy of the stored object atomically and store it as an update.

        ``kind`` picks the resource (``Node``, ``KubeVirt``; VMIs by default); ``namespace`` is
        ignored for cluster-scoped ones.
        """
        key = _key(namespace, name, _resource_of({"kind": kind}))
        with self._lock:
            prev = self._objects.get(key)
            if prev is None:
                raise KeyError(key)
            new = _clone(prev)
            mutate(new)
            text = self._commit(MODIFIED, key, self._carry_metadata(prev, new), prev)
        return _loads_obj(text)

    def patch_status(self, namespace: str, name: str, **fields: Any) -> JsonObj:
        """Merge top-level ``status`` fields (``None`` removes one), e.g. ``phase="Failed"``."""

        def mutate(obj: JsonObj) -> None:
            status = obj.setdefault("status", {})
            for field_name, value in fields.items():
                if value is None:
                    status.pop(field_name, None)
                else:
                    status[field_name] = json.loads(_dumps(value))

        return self.patch(namespace, name, mutate)

    def patch_labels(self, namespace: str, name: str, labels: Mapping[str, str | None]) -> JsonObj:
        """Merge labels (``None`` removes one); label keys contain ``/`` so they cannot be keyword args."""

        def mutate(obj: JsonObj) -> None:
            current = obj.setdefault("metadata", {}).setdefault("labels", {})
            for label, value in labels.items():
                if value is None:
                    current.pop(label, None)
                else:
                    current[label] = value

        return self.patch(namespace, name, mutate)

    def delete(self, namespace: str, name: str, *, kind: str = KIND) -> JsonObj:
        """Remove a VMI and emit DELETED (object = last state with the deletion RV); returns that object.

        Finalizers are not modelled: the object disappears at once.  Raises ``KeyError`` if missing.
        """
        key = _key(namespace, name, _resource_of({"kind": kind}))
        with self._lock:
            prev = self._objects.get(key)
            if prev is None:
                raise KeyError(key)
            text = self._commit(DELETED, key, prev, prev)
        return _loads_obj(text)

    def get(self, namespace: str, name: str, *, kind: str = KIND) -> JsonObj | None:
        """Return a copy of one stored object (a VMI unless ``kind`` says otherwise), or None."""
        with self._lock:
            obj = self._objects.get(_key(namespace, name, _resource_of({"kind": kind})))
        return None if obj is None else _clone(obj)

    def objects(self, *, kind: str = KIND) -> list[JsonObj]:
        """Return copies of all stored objects of ``kind`` (VMIs by default), sorted by key."""
        with self._lock:
            items = sorted(item for item in self._objects.items() if item[1].get("kind") == kind)
        return [_clone(obj) for _, obj in items]

    def compact(self) -> None:
        """Drop all event history up to now, like an etcd compaction: any older RV (watch or continue
        token) now gets 410.  Established watches are unaffected, as on a real server.
        """
        with self._lock:
            self._floor = self._rv
            self._history = []
            self._hstart = 0
            for rv in [rv for rv in self._snapshots if rv < self._floor]:
                del self._snapshots[rv]
            self._notify()

    def restart_with_new_history(
        self, bump: int = 1_000_000, objects: Iterable[Mapping[str, Any]] | None = None
    ) -> None:
        """Simulate an etcd restore behind a restarted API server.

        As with ``etcdutl snapshot restore --bump-revision --mark-compacted`` the revision jumps forward by
        ``bump`` and everything before it is compacted, so every resourceVersion a client holds gets 410 and
        it must relist.  Open watches are cut.  With ``objects``, the store is replaced by them (a restore
        from an older snapshot); their resourceVersions are kept if present, else set to the new base.
        """
        with self._lock:
            watchers = list(self._watchers)
            self._rv += bump
            self._floor = self._rv
            self._history = []
            self._hstart = 0
            self._snapshots.clear()
            if objects is not None:
                restored: dict[str, JsonObj] = {}
                for obj in objects:
                    new = _clone(dict(obj))
                    new.setdefault("kind", KIND)
                    resource = _resource_of(new)
                    metadata = new.setdefault("metadata", {})
                    if resource.namespaced:
                        metadata.setdefault("namespace", "default")
                    metadata.setdefault("uid", str(uuid.uuid4()))
                    metadata.setdefault("resourceVersion", str(self._rv))
                    restored[_key(metadata.get("namespace", ""), metadata["name"], resource)] = new
                self._objects = restored
            self._notify()
        for watcher in watchers:
            watcher.close("drop")

    # ---------------------------------------------------------------- fault injection

    def drop_streams(self) -> int:
        """Abruptly cut every open watch connection (no terminating chunk); returns how many."""
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.close("drop")
        return len(watchers)

    def end_streams(self) -> int:
        """End every open watch cleanly, as the real server does at its request timeout; returns how many."""
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.close("end")
        return len(watchers)

    def send_bookmarks(self) -> int:
        """Make every watch that allowed bookmarks send one now; returns how many were asked."""
        with self._lock:
            watchers = [w for w in self._watchers if w.bookmarks]
        for watcher in watchers:
            watcher.request_bookmark()
        return len(watchers)

    def fail_requests(
        self,
        count: int,
        status: int = 500,
        *,
        verbs: Collection[str] | None = None,
        retry_after: int | None = None,
        message: str | None = None,
        plurals: Collection[str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests (optionally only of some ``verbs``: list, watch, get, ...) with
        ``status`` and a Status body; ``retry_after`` adds a ``Retry-After`` header (as 429/503 do);
        ``plurals`` limits it to requests for those resources (``virtualmachineinstances``, ``nodes``).
        """
        with self._lock:
            self._faults.append(
                _Fault(
                    "fail",
                    count,
                    status,
                    frozenset(verbs) if verbs else None,
                    retry_after,
                    message,
                    frozenset(plurals) if plurals else None,
                )
            )

    def hang_requests(self, count: int, *, verbs: Collection[str] | None = None) -> None:
        """Accept the next ``count`` requests and never answer them (for client timeout tests).  They are
        released, by closing the connection, on :meth:`stop` or :meth:`release_hung_requests`.
        """
        with self._lock:
            self._faults.append(_Fault("hang", count, verbs=frozenset(verbs) if verbs else None))

    def release_hung_requests(self) -> None:
        """Close the connections of all currently hung requests."""
        with self._lock:
            self._hung_release.set()
            self._hung_release = threading.Event()

    def forbid(self, plural: str) -> None:
        """Answer every request for resource ``plural`` (``nodes``, ``kubevirts``...) with 403 Forbidden,
        as the real server does when the service account's RBAC lacks the rule, until :meth:`allow`.
        """
        with self._lock:
            self._forbidden.add(plural)

    def allow(self, plural: str) -> None:
        """Undo :meth:`forbid` (the missing RBAC rule was granted)."""
        with self._lock:
            self._forbidden.discard(plural)

    @staticmethod
    def _forbidden_message(route: _Route) -> str:
        """The real authorizer's wording (``k8s.io/apiserver/pkg/endpoints/handlers/responsewriters``)."""
        assert route.resource is not None
        verb = route.verb
        scope = f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
        return (
            f'{route.resource.qualified} is forbidden: User "system:serviceaccount:otel-vmi-hv:otel-vmi-hv" '
            f'cannot {verb} resource "{route.resource.plural}" in API group "{route.resource.group}" {scope}'
        )

    def restart(self) -> None:
        """Restart the API server process: etcd keeps the store, but the new process's watch cache
        starts at the current revision, so a watch resumed from an older resourceVersion gets
        ``410 Expired`` and its client must relist -- the thundering herd that cached lists soften.
        """
        self.stop()
        with self._lock:
            self._floor = self._rv
            self._history = []
            self._hstart = 0
            self._notify()
        self.start()

    def clear_faults(self) -> None:
        """Forget pending fail/hang injections."""
        with self._lock:
            self._faults.clear()

    # ---------------------------------------------------------------- observation

    @property
    def list_requests(self) -> int:
        """How many list requests arrived (including ones failed by injection or auth)."""
        return self.request_count("list")

    @property
    def watch_requests(self) -> int:
        """How many watch requests arrived (including ones failed by injection or auth)."""
        return self.request_count("watch")

    def request_kinds(self, resource: str | None = None) -> dict[str, int]:
        """Recorded lists and watches (of one resource's plural, or all) by what they cost the server:
        ``consistent_list`` (read from etcd), ``cached_list`` (answered from the watch cache), ``watch``.
        Counted over the bounded request log.
        """
        counts: dict[str, int] = {}
        for request in self.requests:
            if request.kind is not None and (resource is None or request.resource == resource):
                counts[request.kind] = counts.get(request.kind, 0) + 1
        return counts

    def request_count(self, verb: str) -> int:
        """How many requests of ``verb`` (list, watch, get, discovery, version, health, unknown) arrived."""
        with self._lock:
            return self._verb_counts.get(verb, 0)

    @property
    def requests(self) -> list[RecordedRequest]:
        """The most recent requests (bounded log), oldest first."""
        with self._lock:
            return list(self._requests)

    def queries(self, verb: str | None = None) -> list[str]:
        """Raw query strings of recorded requests, optionally only of one verb."""
        return [r.query for r in self.requests if verb is None or r.verb == verb]

    @property
    def open_watches(self) -> int:
        """How many watch streams are currently registered."""
        with self._lock:
            return len(self._watchers)

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Block until ``predicate()`` is true; re-evaluated whenever the server's state changes
        (request received, watch opened/closed, store commit), so tests need no sleeps. The
        predicate runs without the server lock held and may call any public method.

        Raises AssertionError naming ``what`` (what the test waited for) when ``timeout`` passes:
        a test cannot carry on as if it had happened.
        """
        try:
            wait_until(predicate, timeout, what, pause=self._await_change)
        except DeadlinePassed:
            raise AssertionError(
                f"fake API server: {what} did not happen within {timeout:g}s "
                f"({self.open_watches} open watches, {len(self.requests)} requests logged)"
            ) from None

    def _await_change(self, seconds: float) -> None:
        """Return at the next change of the server's state, or after ``seconds``."""
        with self._changed:
            self._changed.wait(seconds)

    def wait_for_watches(self, count: int, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` watch streams are registered (AssertionError if they are not).

        A registered watch has already been sent its 200 headers and will receive every later change, so
        after this returns, store changes and stream faults reach the client deterministically.
        """
        self.wait_for(lambda: self.open_watches >= count, f"{count} open watch streams", timeout)

    # ---------------------------------------------------------------- internals: store

    def _notify(self) -> None:
        """Wake :meth:`wait_for` callers and list requests waiting for a future RV.  Lock must be held."""
        self._changed.notify_all()

    @staticmethod
    def _carry_metadata(prev: JsonObj, new: JsonObj) -> JsonObj:
        """Keep server-owned immutable metadata across updates and bump generation on spec change."""
        metadata = new.setdefault("metadata", {})
        prev_md = prev.get("metadata") or {}
        for name in ("uid", "creationTimestamp", "namespace", "name"):
            if name in prev_md:
                metadata[name] = prev_md[name]
        generation = int(prev_md.get("generation", 1))
        metadata["generation"] = generation + 1 if new.get("spec") != prev.get("spec") else generation
        return new

    def _commit(self, event_type: str, key: str, new: JsonObj, prev: JsonObj | None) -> str:
        """Bump the RV, apply the change, record it and fan it out; return the stored object's JSON.

        Lock must be held.  ``new`` may still share nested values with the caller: encoding it once both
        deep-copies it (the stored dict is decoded from the text) and pre-builds the watch line, so a write
        costs one encode whatever the number of watchers.  For DELETED, ``new`` is the stored object.
        """
        self._rv += 1
        rv = self._rv
        if event_type == DELETED:
            obj = _with_rv(new, rv)
            del self._objects[key]
            text = _dumps(obj)
        else:
            new["metadata"]["resourceVersion"] = str(rv)
            text = _dumps(new)
            obj = _loads_obj(text)
            self._objects[key] = obj
        event = _Event(rv, event_type, key, obj, prev)
        event.lines[event_type] = f'{{"type":"{event_type}","object":{text}}}\n'.encode()
        self._history.append(event)
        if len(self._history) - self._hstart > self.history_window:
            self._floor = self._history[self._hstart].rv
            self._hstart += 1
            if self._hstart >= self.history_window:  # amortised O(1) trimming of the list head
                del self._history[: self._hstart]
                self._hstart = 0
        overflowed = [w for w in self._watchers if not w.push(event, self.max_watch_queue)]
        for watcher in overflowed:
            self._watchers.discard(watcher)
            watcher.close("end")
        self._notify()
        return text

    def _events_after(self, rv: int) -> list[_Event]:
        """History events with rv > ``rv``; caller holds the lock and has checked ``rv >= floor``."""
        start = bisect.bisect_right(self._history, rv, lo=self._hstart, key=lambda e: e.rv)
        return self._history[start:]

    def _snapshot_at(self, rv: int) -> _Snapshot:
        """The store as it was at ``rv``: cached, or rebuilt by undoing history newer than ``rv``."""
        with self._lock:
            if rv < self._floor:
                raise _ApiError(410, f"too old resource version: {rv} ({self._floor})", reason="Expired")
            cached = self._snapshots.get(rv)
            if cached is not None:
                self._snapshots.move_to_end(rv)
                return cached
            state = dict(self._objects)
            undo = self._events_after(rv)
        for event in reversed(undo):
            if event.prev is None:
                state.pop(event.key, None)
            else:
                state[event.key] = event.prev
        keys = sorted(state)
        snapshot = _Snapshot(rv, keys, [state[k] for k in keys])
        with self._lock:
            self._snapshots[rv] = snapshot
            while len(self._snapshots) > self.snapshot_cache_size:
                self._snapshots.popitem(last=False)
        return snapshot

    # ---------------------------------------------------------------- internals: HTTP

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        """Remember open connections so :meth:`stop` can cut them; refuse ones accepted while stopping."""
        with self._lock:
            if not add:
                self._conns.discard(conn)
                return
            if self._serving:
                self._conns.add(conn)
                return
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    def _take_fault(self, verb: str, plural: str | None) -> _Fault | None:
        """Consume one unit of the first pending fault that applies to ``verb`` (and the resource's
        ``plural``).  Lock must be held."""
        for fault in self._faults:
            if (fault.verbs is None or verb in fault.verbs) and (
                fault.plurals is None or plural in fault.plurals
            ):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _handle(self, h: _Handler) -> None:
        """Entry point for every request, in this order: record it (counters, request log), apply a pending
        hang/fail injection, check the bearer token, dispatch.  Injected faults therefore win over auth.
        """
        payload = b""
        if h.command != "GET":
            length = int(h.headers.get("Content-Length") or 0)
            if length:
                payload = h.rfile.read(length)
        parts = urlsplit(h.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        route = _route(parts.path, params)
        if h.command in WRITE_VERBS and route.resource is not None:
            route = _Route(WRITE_VERBS[h.command], route.namespace, route.name, route.resource)
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    h.command,
                    parts.path,
                    parts.query,
                    params,
                    route.verb,
                    route.namespace,
                    h.headers.get("Authorization"),
                    route.resource.plural if route.resource else None,
                    read_kind(route.verb, params),
                )
            )
            self._verb_counts[route.verb] = self._verb_counts.get(route.verb, 0) + 1
            fault = self._take_fault(route.verb, route.resource.plural if route.resource else None)
            forbidden = route.resource is not None and route.resource.plural in self._forbidden
            release = self._hung_release
            self._notify()
        try:
            if fault is not None and fault.kind == "hang":
                release.wait()
                h.close_connection = True
                with contextlib.suppress(OSError):
                    h.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None:
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
                self._send_json(h, fault.status, status_object(fault.status, fault.message), headers)
                return
            if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
                self._send_json(h, 401, status_object(401))
                return
            if forbidden:
                assert route.resource is not None
                raise _ApiError(403, self._forbidden_message(route), reason="Forbidden")
            if h.command != "GET":
                self._write(h, route, payload, params.get("dryRun"))
            else:
                self._dispatch(h, route, params)
        except _ApiError as err:
            body = status_object(
                err.code,
                err.message,
                reason=err.reason,
                details=err.details,
                continue_token=err.continue_token,
            )
            self._send_json(h, err.code, body)
        except OSError:
            h.close_connection = True

    def _dispatch(self, h: _Handler, route: _Route, params: Mapping[str, str]) -> None:
        if route.verb == "health":
            self._send_bytes(h, 200, b"ok", "text/plain; charset=utf-8")
            return
        if route.verb == "unknown":
            raise _ApiError(404, details={})
        if h.command != "GET":
            raise _ApiError(405)
        if route.verb == "version":
            self._send_json(
                h,
                200,
                {
                    "major": "1",
                    "minor": "30",
                    "gitVersion": "v1.30.0-fake",
                    "gitCommit": "0" * 40,
                    "gitTreeState": "clean",
                    "buildDate": "2024-01-01T00:00:00Z",
                    "goVersion": "go1.22.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                },
            )
        elif route.verb == "discovery":
            self._send_json(h, 200, self._discovery(route.name or ""))
        elif route.verb == "get":
            assert route.resource is not None and route.name is not None
            with self._lock:
                obj = self._objects.get(_key(route.namespace or "", route.name, route.resource))
            if obj is None:
                raise _ApiError(
                    404,
                    f'{route.resource.qualified} "{route.name}" not found',
                    details={
                        "name": route.name,
                        "group": route.resource.group,
                        "kind": route.resource.plural,
                    },
                )
            self._send_bytes(h, 200, _dumps(obj).encode())
        else:
            flt = self._parse_filter(route, params)
            if route.verb == "watch":
                self._serve_watch(h, flt, params)
            else:
                self._send_bytes(h, 200, self._list(flt, params))

    def _write(self, h: _Handler, route: _Route, body: bytes, dry_run: str | None = None) -> None:
        """An Event written as the real server takes it: create (409 on an existing name), replace or
        merge-patch (404 when missing). Writes of any other resource, or another method, get 405.
        ``dryRun=All`` on a create validates and answers as a create, but stores nothing."""
        resource = route.resource
        if resource is not EVENT_RESOURCE or route.verb not in WRITE_VERBS.values():
            raise _ApiError(405, f"{h.command} is not allowed on {h.path}", reason="MethodNotAllowed")
        assert route.namespace is not None
        if dry_run is not None and dry_run != "All":
            raise _ApiError(400, f'dryRun: Unsupported value: "{dry_run}": supported values: "All"')
        try:
            obj = json.loads(body)
        except ValueError:
            raise _ApiError(400, "the body is not JSON", reason="BadRequest") from None
        if not isinstance(obj, dict):
            raise _ApiError(400, "the body is not an object", reason="BadRequest")
        if route.verb == "create" and route.name is None:
            metadata = obj.setdefault("metadata", {})
            if metadata.setdefault("namespace", route.namespace) != route.namespace:
                raise _ApiError(
                    400, "the namespace of the object does not match the request", reason="BadRequest"
                )
            obj["kind"], name = "Event", str(metadata.get("name"))
            try:
                if dry_run is None:
                    self._send_json(h, 201, self.create(obj))
                    return
                if self.get(route.namespace, name, kind="Event") is not None:
                    raise ValueError(name)
                metadata.update(uid=str(uuid.uuid4()), creationTimestamp=_now_rfc3339())
                self._send_json(h, 201, obj)
            except ValueError:
                details = {"name": name, "kind": "events"}
                raise _ApiError(
                    409, f'events "{name}" already exists', reason="AlreadyExists", details=details
                ) from None
            return
        if route.name is None or route.verb == "create":
            raise _ApiError(405, f"{h.command} is not allowed on {h.path}", reason="MethodNotAllowed")
        try:
            if route.verb == "update":
                obj.setdefault("metadata", {}).update(name=route.name, namespace=route.namespace)
                self._send_json(h, 200, self.update({**obj, "kind": "Event"}))
            else:
                stored = self.patch(route.namespace, route.name, lambda o: _merge_patch(o, obj), kind="Event")
                self._send_json(h, 200, stored)
        except KeyError:
            details = {"name": route.name, "kind": "events"}
            raise _ApiError(
                404, f'events "{route.name}" not found', reason="NotFound", details=details
            ) from None

    def _discovery(self, path: str) -> JsonObj:
        group_version = {"groupVersion": API_VERSION, "version": VERSION}
        group = {"name": GROUP, "versions": [group_version], "preferredVersion": group_version}
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self._port}"}
                ],
            }
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
        if path == f"/apis/{GROUP}":
            return {"kind": "APIGroup", "apiVersion": "v1", **group}
        served = [r for r in RESOURCES if (r.group == GROUP) == (path != "/api/v1")]
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "v1" if path == "/api/v1" else API_VERSION,
            "resources": [
                {
                    "name": r.plural,
                    "singularName": r.singular,
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": [
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "create",
                        "update",
                        "watch",
                    ],
                    "shortNames": list(r.short_names),
                    **({"categories": ["all"]} if r is VMI_RESOURCE else {}),
                }
                for r in served
            ],
        }

    @staticmethod
    def _parse_filter(route: _Route, params: Mapping[str, str]) -> _Filter:
        resource = route.resource or VMI_RESOURCE
        try:
            return _Filter(
                route.namespace,
                LabelSelector.parse(params.get("labelSelector", "")),
                FieldSelector.parse(params.get("fieldSelector", ""), resource.fields),
                resource,
            )
        except SelectorError as exc:
            raise _ApiError(400, f"unable to parse requirement: {exc}") from None

    @staticmethod
    def _parse_rv(value: str) -> int:
        try:
            rv = int(value)
        except ValueError:
            rv = -1
        if rv < 0:
            raise _ApiError(400, f'resourceVersion: Invalid value: "{value}": invalid resource version')
        return rv

    @staticmethod
    def _invalid_list_options(message: str) -> _ApiError:
        return _ApiError(422, f'ListOptions.meta.k8s.io "" is invalid: {message}', reason="Invalid")

    def _list(self, flt: _Filter, params: Mapping[str, str]) -> bytes:
        """Serve a list (see module docstring for the resourceVersion / pagination rules)."""
        rv_param = params.get("resourceVersion", "")
        rv_match = params.get("resourceVersionMatch", "")
        token = params.get("continue", "")
        try:
            limit = int(params.get("limit") or 0)
        except ValueError:
            raise _ApiError(400, f"limit: Invalid value: {params.get('limit')!r}") from None
        if rv_match:
            if rv_match not in ("Exact", "NotOlderThan"):
                raise self._invalid_list_options(f'resourceVersionMatch: Unsupported value: "{rv_match}"')
            if not rv_param:
                raise self._invalid_list_options(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless "
                    "resourceVersion is provided"
                )
            if token:
                raise self._invalid_list_options(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is "
                    "provided"
                )
            if rv_match == "Exact" and rv_param == "0":
                raise self._invalid_list_options(
                    'resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden for '
                    'resourceVersion "0"'
                )

        snapshot: _Snapshot | None = None
        start_key = ""
        if token:
            if rv_param not in ("", "0"):
                raise _ApiError(400, "specifying resource version is not allowed when using continue")
            token_rv, start_key = _decode_continue(token)
            if token_rv == -1:  # inconsistent continuation: latest state
                snapshot = self._snapshot_at(int(self.resource_version))
            else:
                try:
                    snapshot = self._snapshot_at(token_rv)
                except _ApiError:
                    raise _ApiError(
                        410,
                        CONTINUE_EXPIRED_MESSAGE,
                        reason="Expired",
                        continue_token=_encode_continue(-1, start_key),
                    ) from None
        elif rv_match == "Exact":
            wanted = self._parse_rv(rv_param)
            self._wait_for_rv(wanted)
            snapshot = self._snapshot_at(wanted)
        else:
            if rv_param not in ("", "0"):
                self._wait_for_rv(self._parse_rv(rv_param))
            if rv_param == "0" and self.watch_cache:
                limit = 0  # the watch cache serves resourceVersion=0 whole, ignoring limit
            if limit:
                snapshot = self._snapshot_at(int(self.resource_version))

        metadata: JsonObj = {}
        if snapshot is None:  # unpaginated: read the live store
            with self._lock:
                items = list(self._objects.items())
                metadata["resourceVersion"] = str(self._rv)
            items.sort()
            objs = [obj for _, obj in items if flt.matches(obj)]
        else:
            metadata["resourceVersion"] = str(snapshot.rv)
            objs, next_key, remaining = self._page(snapshot, flt, start_key, limit)
            if next_key is not None:
                metadata["continue"] = _encode_continue(snapshot.rv, next_key)
                if not flt.has_selectors:
                    metadata["remainingItemCount"] = remaining
        # Items are pre-serialised dicts; join their JSON to avoid re-walking a large list twice.
        resource = flt.resource
        items_json = f'"items":[{",".join(_dumps(o) for o in objs)}]'
        if self.list_metadata_last:
            head = _dumps({"apiVersion": resource.api_version, "kind": resource.list_kind})[:-1]
            return f'{head},{items_json},"metadata":{_dumps(metadata)}}}'.encode()
        head = _dumps({"apiVersion": resource.api_version, "kind": resource.list_kind, "metadata": metadata})[
            :-1
        ]
        return f"{head},{items_json}}}".encode()

    @staticmethod
    def _page(
        snapshot: _Snapshot, flt: _Filter, start_key: str, limit: int
    ) -> tuple[list[JsonObj], str | None, int]:
        """Walk the snapshot from ``start_key`` collecting up to ``limit`` matches (etcd3 ``GetList``).

        Returns the items, the next start key if keys remain in the range (even if none of them would
        match, as with real etcd paging), and how many keys remain.
        """
        keys = snapshot.keys
        # The resource's range "<plural>/" .. "<plural>0", or a namespace's "<plural>/<ns>/" ..
        # "<plural>/<ns>0" ('0' follows '/').
        prefix = flt.resource.prefix + (f"{flt.namespace}/" if flt.namespace is not None else "")
        lo = bisect.bisect_left(keys, prefix)
        hi = bisect.bisect_left(keys, prefix[:-1] + "0")
        i = max(lo, bisect.bisect_left(keys, start_key)) if start_key else lo
        items: list[JsonObj] = []
        while i < hi and (not limit or len(items) < limit):
            obj = snapshot.objs[i]
            if flt.matches(obj):
                items.append(obj)
            i += 1
        if limit and i < hi:
            return items, keys[i - 1] + "\x00", hi - i
        return items, None, 0

    def _wait_for_rv(self, rv: int) -> None:
        """Wait briefly for a future resourceVersion, then fail like the real server (504, TooLarge)."""
        deadline = time.monotonic() + self.too_large_rv_wait
        with self._changed:
            while self._rv < rv:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _ApiError(
                        504,
                        f"Timeout: Too large resource version: {rv}, current: {self._rv}",
                        details={
                            "causes": [
                                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
                            ],
                            "retryAfterSeconds": 1,
                        },
                    )
                self._changed.wait(remaining)

    def _serve_watch(self, h: _Handler, flt: _Filter, params: Mapping[str, str]) -> None:
        """Stream watch events as chunked JSON lines until timeout, client hang-up, or a fault."""
        rv_param = params.get("resourceVersion", "")
        bookmarks = _truthy(params.get("allowWatchBookmarks"))
        send_initial = _truthy(params.get("sendInitialEvents"))
        timeout_param = params.get("timeoutSeconds")
        try:
            timeout = float(timeout_param) if timeout_param else math.inf
        except ValueError:
            raise _ApiError(400, f"timeoutSeconds: Invalid value: {timeout_param!r}") from None
        if send_initial and not bookmarks:
            raise self._invalid_list_options(
                "allowWatchBookmarks: Forbidden: allowWatchBookmarks must be set to true when "
                "sendInitialEvents is set"
            )
        since = None if rv_param in ("", "0") or send_initial else self._parse_rv(rv_param)

        # Headers go out before the watcher is registered: once wait_for_watches() sees it, the client holds
        # a 200 response, so a fault injected from then on is a broken stream, never a request that urllib3
        # would silently retry.  Both outcomes below (events or the 410 ERROR event) are 200s, as for real.
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Cache-Control", "no-cache, private")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        watcher = _Watcher(flt, h.connection, bookmarks)
        initial: list[tuple[str, JsonObj]] = []
        replay: list[_Event] = []
        too_old: str | None = None
        with self._lock:
            if not self._serving:
                raise OSError("server stopping")
            if since is not None and since < self._floor:
                too_old = f"too old resource version: {since} ({self._floor})"
            else:
                if since is None:
                    initial = list(self._objects.items())
                else:
                    replay = self._events_after(since)
                watcher.after_rv = max(self._rv, since or 0)
                watcher.last_rv = self._rv
                self._watchers.add(watcher)
                self._notify()
        if too_old is not None:
            error = status_object(410, too_old, reason="Expired")
            h.wfile.write(_chunk(_encode_line(ERROR, error)) + _LAST_CHUNK)
            return
        try:
            self._stream(h, watcher, sorted(initial), replay, send_initial=send_initial, timeout=timeout)
        finally:
            with self._lock:
                self._watchers.discard(watcher)
                self._notify()

    @staticmethod
    def _bookmark(resource: ResourceType, rv: int, initial_events_end: bool = False) -> bytes:
        metadata: JsonObj = {"resourceVersion": str(rv)}
        if initial_events_end:
            metadata["annotations"] = {INITIAL_EVENTS_END_ANNOTATION: "true"}
        bookmark = {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": metadata}
        return _chunk(_encode_line(BOOKMARK, bookmark))

    def _stream(
        self,
        h: _Handler,
        w: _Watcher,
        initial: list[tuple[str, JsonObj]],
        replay: list[_Event],
        *,
        send_initial: bool,
        timeout: float,
    ) -> None:
        """The per-watch write loop: initial state or replay, then queued live events, bookmarks, timeout."""
        now = time.monotonic()
        deadline = now + timeout
        next_bookmark = now + self.bookmark_interval if w.bookmarks else math.inf
        next_liveness = now + self.liveness_interval
        out = bytearray()
        for _, obj in initial:
            if w.filter.matches(obj):
                out += _chunk(_encode_line(ADDED, obj))
                if len(out) >= _WRITE_BATCH:
                    h.wfile.write(out)
                    out.clear()
        if send_initial:
            out += self._bookmark(w.filter.resource, w.last_rv, initial_events_end=True)
        for event in replay:
            line = w.convert(event)
            if line is not None:
                out += _chunk(line)
                if len(out) >= _WRITE_BATCH:
                    h.wfile.write(out)
                    out.clear()
        if out:
            h.wfile.write(out)
            out.clear()

        while True:
            with w.cond:
                while not (w.queue or w.state or w.bookmark_requested):
                    now = time.monotonic()
                    wake = min(deadline, next_bookmark, next_liveness)
                    if now >= wake:
                        break
                    w.cond.wait(wake - now)
                events = list(w.queue)
                w.queue.clear()
                state, bookmark_requested = w.state, w.bookmark_requested
                w.bookmark_requested = False
            if state == "drop":
                h.close_connection = True
                return
            for event in events:
                if event.rv <= w.after_rv:
                    continue
                w.last_rv = event.rv
                line = w.convert(event)
                if line is not None:
                    out += _chunk(line)
            now = time.monotonic()
            if w.bookmarks and (bookmark_requested or now >= next_bookmark):
                out += self._bookmark(w.filter.resource, w.last_rv)
                next_bookmark = now + self.bookmark_interval
            finished = state == "end" or now >= deadline
            if finished:
                out += _LAST_CHUNK
            if out:
                h.wfile.write(out)
                out.clear()
            if finished:
                return
            if now >= next_liveness:
                next_liveness = now + self.liveness_interval
                if _peer_closed(h.connection):
                    h.close_connection = True
                    return

    @staticmethod
    def _send_bytes(
        h: _Handler,
        code: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        h.send_response(code)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Cache-Control", "no-cache, private")
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)

    def _send_json(
        self, h: _Handler, code: int, obj: JsonObj, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send_bytes(h, code, _dumps(obj).encode(), headers=headers)
