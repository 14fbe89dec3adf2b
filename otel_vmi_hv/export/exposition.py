"""What /metrics answers: the format and encoding a scraper asked for, and a body reused while
nothing it shows changed.

Formats: ``choose_format`` follows RFC 9110's ``Accept`` rules (the most specific range gives a
format its quality, q=0 refuses it); anything not preferring OpenMetrics 1.0 gets text 0.0.4, and
Prometheus 3's ``escaping`` is accepted when it leaves legacy names as they are. Cache: the
collected part is rendered once per format while the ``state`` read at scrape time compares equal;
the process metrics are rendered fresh and appended. Gzip: the collected part is deflated once and
sync-flushed; a scrape deflates only the fresh part and continues the CRC: one gzip member, since
``curl --compressed`` reads only the first.
"""

from __future__ import annotations

import enum
import re
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EOF = b"# EOF\n"
GZIP_MIN_BYTES = 4096  # below this, gzip's framing and the CPU cost more than the bytes saved
GZIP_LEVEL = 1  # scrapes are frequent and exposition text compresses well even at the fastest level
# RFC 1952 member header: magic, deflate, no flags, no mtime (bodies stay byte-identical), XFL 4
# (fastest), OS unknown.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
# Escaping schemes that leave a legacy name unchanged ("dots" doubles every underscore).
_LEGACY_PRESERVING_ESCAPING = frozenset({"allow-utf-8", "underscores", "values"})
_QVALUE = re.compile(r"^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$")


class Format(enum.Enum):
    """An exposition format /metrics serves; the value is the response's Content-Type."""

    TEXT = TEXT_CONTENT_TYPE
    OPENMETRICS = OPENMETRICS_CONTENT_TYPE

    @property
    def content_type(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Scrape:
    """One /metrics answer: the body as sent, its Content-Type and Content-Encoding (or None)."""

    body: bytes
    content_type: str
    encoding: str | None


def _media_ranges(accept: str) -> list[tuple[str, dict[str, str], float]]:
    """``Accept`` (or ``Accept-Encoding``) as (media range, parameters, quality) in the client's
    order; a malformed quality counts as 0 (refused)."""
    ranges = []
    for item in accept.split(","):
        media, _, rest = item.partition(";")
        media = media.strip().lower()
        if not media:
            continue
        params: dict[str, str] = {}
        quality = 1.0
        for param in rest.split(";"):
            key, _, value = param.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                quality = float(value) if _QVALUE.match(value) else 0.0
            elif key:
                params[key] = value
        ranges.append((media, params, quality))
    return ranges


def _specificity(fmt: Format, media: str, params: dict[str, str]) -> int | None:
    """How specifically a media range names ``fmt`` (3 type and version, 2 type, 1 ``type/*``,
    0 ``*/*``), or None when it does not match."""
    kind, name = ("application", "openmetrics-text") if fmt is Format.OPENMETRICS else ("text", "plain")
    if media in ("*/*", f"{kind}/*"):
        return 0 if media == "*/*" else 1
    if media != f"{kind}/{name}":
        return None
    version = params.get("version")
    if fmt is Format.TEXT:  # any text/plain version asks for the text family; 0.0.4 is served
        return 3 if version == "0.0.4" else 2
    if params.get("escaping", "allow-utf-8") not in _LEGACY_PRESERVING_ESCAPING:
        return None
    return 2 if version is None else 3 if version == "1.0.0" else None


def choose_format(accept: str) -> Format:
    """OpenMetrics when ``Accept`` prefers it over the Prometheus text format, else text 0.0.4.

    Like prometheus_client's ``choose_encoder``, but q-values are honoured: each format's quality
    is that of the most specific range naming it; a tie goes to the more specific range, then to
    the one listed first, and a tie within one range (``*/*``) to text, which every client reads.
    """
    best: dict[Format, tuple[int, float, int]] = {}  # format: (specificity, quality, -position)
    for position, (media, params, quality) in enumerate(_media_ranges(accept)):
        for fmt in Format:
            specificity = _specificity(fmt, media, params)
            if specificity is None:
                continue
            current = best.get(fmt)
            if current is None or (specificity, quality) > current[:2]:
                best[fmt] = (specificity, quality, -position)
    om, text = best.get(Format.OPENMETRICS), best.get(Format.TEXT)
    if om is None or om[1] <= 0:
        return Format.TEXT
    if text is None or (om[1], om[0], om[2]) > (text[1], text[0], text[2]):
        return Format.OPENMETRICS
    return Format.TEXT


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip, honouring q-values (``gzip;q=0`` refuses it)."""
    quality = {coding: q for coding, _, q in _media_ranges(accept_encoding)}
    named = [q for coding, q in quality.items() if coding in ("gzip", "x-gzip")]
    return max(named) > 0 if named else quality.get("*", 0) > 0


class Deflater(Protocol):
    """What the cache needs of ``zlib.compressobj``; tests pass one that counts what it is fed."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


def raw_deflater(small: bool = False) -> Deflater:
    """A raw deflate stream (no zlib or gzip framing): the cache writes the gzip framing itself.

    ``small`` is for the fresh part of a scrape, a few KiB: a small window and the least memory
    make the compressor much cheaper to set up (BENCHMARKS.md), most of an unchanged scrape's cost.
    """
    if small:
        return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -12, 2)
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)


@dataclass(slots=True)
class _Collected:
    """The collected part of one format's body in one state, and its gzip start once asked for."""

    state: object
    plain: bytes
    gzip_head: bytes | None = None  # GZIP_HEADER + ``plain`` deflated and sync-flushed
    crc: int = 0  # CRC-32 of ``plain``


class Exposition:
    """The /metrics body per format and encoding; the collected part is cached while ``state()``
    compares equal to what it returned before that part was collected.

    ``state()`` reads the versions of everything the collected part shows, ``collect(fmt)`` renders
    those families (one MeterProvider collection), ``fresh(fmt)`` the families read at every scrape.
    None may do I/O beyond reading this process' own state, and ``state`` must not block.
    """

    def __init__(
        self,
        state: Callable[[], object],
        collect: Callable[[Format], bytes],
        fresh: Callable[[Format], bytes],
        *,
        deflater: Callable[[bool], Deflater] = raw_deflater,
    ) -> None:
        self._state = state
        self._collect = collect
        self._fresh = fresh
        self._deflater = deflater
        self._lock = threading.Lock()  # one collection at a time; waiters then reuse its body
        self._collected: dict[Format, _Collected] = {}
        self._formats: dict[str, Format] = {}

    def scrape(self, accept: str, accept_encoding: str) -> Scrape:
        """The answer to a GET with these ``Accept`` and ``Accept-Encoding`` headers."""
        return self.render(self._format(accept), accepts_gzip(accept_encoding))

    def cached(self, accept: str, accept_encoding: str) -> Scrape | None:
        """The same answer when it needs neither a collection nor compressing the collected part
        (the state stands and that part is ready), else None; never waits for the lock. Made for
        the HTTP server's event loop: what is left (reading /proc/self, compressing the fresh part)
        costs less than handing the scrape to a thread."""
        fmt, want_gzip = self._format(accept), accepts_gzip(accept_encoding)
        if not self._lock.acquire(blocking=False):
            return None  # a collection is running
        try:
            collected = self._collected.get(fmt)
            if collected is None or collected.state != self._state():
                return None
        finally:
            self._lock.release()
        return self._answer(fmt, want_gzip, collected, compress_collected=False)

    def render(self, fmt: Format, want_gzip: bool) -> Scrape:
        answer = self._answer(fmt, want_gzip, self._current(fmt), compress_collected=True)
        assert answer is not None
        return answer

    def _format(self, accept: str) -> Format:
        """``choose_format``, remembered per header: a scraper sends the same one every time."""
        fmt = self._formats.get(accept)
        if fmt is None:
            if len(self._formats) >= 64:
                self._formats.clear()  # bounded whatever clients send
            fmt = self._formats[accept] = choose_format(accept)
        return fmt

    def _answer(
        self, fmt: Format, want_gzip: bool, collected: _Collected, *, compress_collected: bool
    ) -> Scrape | None:
        tail = self._fresh(fmt)
        if fmt is Format.OPENMETRICS:
            tail += EOF
        length = len(collected.plain) + len(tail)
        if not want_gzip or length < GZIP_MIN_BYTES:
            return Scrape(collected.plain + tail, fmt.content_type, None)
        if collected.gzip_head is None and not compress_collected:
            return None
        head, crc = self._gzip_head(collected)
        deflater = self._deflater(True)
        compressed_tail = deflater.compress(tail) + deflater.flush(zlib.Z_FINISH)
        trailer = struct.pack("<II", zlib.crc32(tail, crc), length & 0xFFFFFFFF)
        return Scrape(head + compressed_tail + trailer, fmt.content_type, "gzip")

    def _current(self, fmt: Format) -> _Collected:
        """The collected part in the current state, rendered now if the state changed. The state is
        read before collecting, so a change racing with the collection only causes one more
        collection later, never a stale body."""
        with self._lock:
            state = self._state()
            collected = self._collected.get(fmt)
            if collected is None or collected.state != state:
                collected = _Collected(state, self._collect(fmt))
                self._collected[fmt] = collected
            return collected

    def _gzip_head(self, collected: _Collected) -> tuple[bytes, int]:
        if collected.gzip_head is not None:  # set once, under the lock, never changed after
            return collected.gzip_head, collected.crc
        with self._lock:
            if collected.gzip_head is None:
                deflater = self._deflater(False)
                body = deflater.compress(collected.plain) + deflater.flush(zlib.Z_SYNC_FLUSH)
                collected.crc = zlib.crc32(collected.plain)
                collected.gzip_head = GZIP_HEADER + body
            return collected.gzip_head, collected.crc
