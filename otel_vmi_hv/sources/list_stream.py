"""The items of a Kubernetes list answer, decoded one at a time while the body arrives.

Why: before Kubernetes 1.33 the watch cache ignores ``limit``, so the first list brings every VMI of
the node in one JSON document, and ``json.loads`` of it would hold the bytes, the text and the whole
object tree at once (a high-water mark the process keeps; BENCHMARKS.md). Here only one item's
objects and a window of text exist at a time. The document is walked with the standard library's
``json.JSONDecoder.raw_decode``, one value at a time, ``metadata`` before or after ``items``; a value
cut by the end of a chunk is tried again once the text after it has at least doubled (linear time).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's insignificant whitespace


class ListBody:
    """One list answer: iterate :meth:`items`, then read :attr:`metadata`."""

    def __init__(self, chunks: Iterable[bytes], what: str = "list") -> None:
        self._chunks = iter(chunks)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._what = what
        self._text = ""
        self._pos = 0
        self._eof = False
        self.metadata: Mapping[str, Any] = {}

    def items(self) -> Iterator[Any]:
        """Every element of ``items``, decoded one after the other; then the rest of the document.

        ``metadata`` is known once the iteration ended (the server may write it after the items).
        Anything that is not one JSON object with an ``items`` array (or null) raises ValueError.
        """
        self._expect("{", "not a JSON object")
        for _ in self._elements("}"):
            key = self._value()
            if not isinstance(key, str):
                raise self._error("an object key is not a string")
            self._expect(":", "a key without a value")
            if key == "items" and self._peek() == "[":
                self._pos += 1
                for _ in self._elements("]"):
                    yield self._value()
                continue
            value = self._value()
            if key == "items" and value is not None:
                raise self._error("items is not an array")
            if key == "metadata" and isinstance(value, Mapping):
                self.metadata = value
        if self._peek() != "":
            raise self._error("text after the JSON object")

    # ------------------------------------------------------------------ the walk

    def _elements(self, closing: str) -> Iterator[None]:
        """Once per element of the container just opened (the caller reads it), up to ``closing``."""
        if self._peek() == closing:
            self._pos += 1
            return
        while True:
            yield
            char = self._peek()
            if char not in (",", closing):
                raise self._error(f"expected ',' or {closing!r}")
            self._pos += 1
            if char == closing:
                return

    def _value(self) -> Any:
        """The next JSON value, reading as much of the body as it takes."""
        self._peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, self._pos)
            except json.JSONDecodeError as error:
                if self._eof:
                    raise self._error(f"malformed JSON ({error.msg})") from None
                self._read(2 * (len(self._text) - self._pos))
                continue
            if end < len(self._text) or self._eof:
                self._pos = end
                return value
            self._read(end - self._pos + 1)  # a number could go on in the next chunk

    def _expect(self, char: str, problem: str) -> None:
        if self._peek() != char:
            raise self._error(problem)
        self._pos += 1

    def _peek(self) -> str:
        """The next character that is not whitespace ("" at the end of the body)."""
        while True:
            self._pos = _WHITESPACE.match(self._text, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._text) or self._eof:
                return self._text[self._pos : self._pos + 1]
            self._read(1)

    def _read(self, at_least: int) -> None:
        """Read chunks until ``at_least`` characters are unread, or the body ends."""
        parts = [self._text[self._pos :]]
        self._pos = 0
        have = len(parts[0])
        while not self._eof and have < at_least:
            chunk = next(self._chunks, None)
            self._eof = chunk is None
            parts.append(self._utf8.decode(chunk or b"", final=self._eof))
            have += len(parts[-1])
        self._text = "".join(parts)

    def _error(self, problem: str) -> ValueError:
        return ValueError(f"{self._what} answer is not a Kubernetes list: {problem}")
