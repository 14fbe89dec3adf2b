"""A list answer decoded item by item: the same items and metadata ``json.loads`` finds in the whole
document, however the body is cut into chunks, and each item handed out before the rest has arrived."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from otel_vmi_hv.sources.list_stream import ListBody
from tests.fakes.kubevirt_objects import make_vmi


def vmi_list(count: int, *, metadata_last: bool = False, indent: int | None = None) -> bytes:
    """A VMI list as the API server writes it: the real fixture VMI, ``count`` times over."""
    items = [make_vmi("ns-ü", f"vm-{index}", "worker-1") for index in range(count)]
    metadata = {"resourceVersion": "4242", "continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"}
    head: dict[str, Any] = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceList"}
    document = (
        {**head, "items": items, "metadata": metadata}
        if metadata_last
        else {
            **head,
            "metadata": metadata,
            "items": items,
        }
    )
    return json.dumps(document, indent=indent, ensure_ascii=False).encode()


def chunks(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def decode(body: bytes, size: int) -> tuple[list[Any], dict[str, Any]]:
    listed = ListBody(chunks(body, size))
    items = list(listed.items())
    return items, dict(listed.metadata)


@pytest.mark.parametrize("metadata_last", [False, True], ids=["metadata-first", "metadata-last"])
@pytest.mark.parametrize("size", [1, 7, 4096, 65536, 10**9], ids=lambda size: f"chunks-of-{size}")
def test_the_same_items_and_metadata_as_the_whole_document(metadata_last: bool, size: int) -> None:
    body = vmi_list(3 if size == 1 else 40, metadata_last=metadata_last)
    whole = json.loads(body)
    assert decode(body, size) == (whole["items"], whole["metadata"])


def test_whitespace_and_multibyte_characters_cut_anywhere() -> None:
    """Pretty-printed JSON, and a name whose UTF-8 bytes are split between two chunks."""
    body = vmi_list(2, indent=2)
    whole = json.loads(body)
    assert "ü" in body.decode()
    for size in (1, 2, 3, 5):
        assert decode(body, size) == (whole["items"], whole["metadata"])


def test_a_number_cut_by_a_chunk_is_read_whole() -> None:
    body = b'{"metadata":{"resourceVersion":"7"},"items":[{"n":1234567}],"extra":98765}'
    cut = body.index(b"98765") + 2
    listed = ListBody(iter([body[:cut], body[cut:]]))
    assert list(listed.items()) == [{"n": 1234567}]
    assert listed.metadata == {"resourceVersion": "7"}


def test_each_item_is_handed_out_before_the_rest_of_the_body_is_read() -> None:
    """What bounds the memory: at most the item being decoded and one chunk are held."""
    body = vmi_list(50)
    item_bytes = len(body) // 50
    read: list[int] = []

    def counting(size: int) -> Iterator[bytes]:
        for chunk in chunks(body, size):
            read.append(len(chunk))
            yield chunk

    listed = ListBody(counting(4096))
    for index, _item in enumerate(listed.items()):
        # Item n ends after about (n + 1) items' bytes; a chunk further at most.
        assert sum(read) <= (index + 1) * item_bytes + 600 + 2 * 4096
    assert sum(read) == len(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind":"List","metadata":{},"items":[]}',
        b'{"kind":"List","metadata":{},"items":null}',
        b'{"kind":"List","metadata":{}}',
        b"{}",
        b'  {"items":[ {"a":1} , {"b":[2]} ] }  \n',
    ],
    ids=["empty", "null-items", "no-items", "empty-object", "spaces"],
)
def test_short_and_empty_lists(body: bytes) -> None:
    whole = json.loads(body)
    assert decode(body, 3) == (whole.get("items") or [], whole.get("metadata", {}))


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"a list"',
        b'{"items":[{"a":1},{"b":2}',  # cut short
        b'{"items":[{"a":1} {"b":2}]}',  # no comma
        b'{"items":{"a":1}}',
        b'{"items":[{"a":1}]} trailing',
        b'{"items":[{"a":tru}]}',
        b"",
    ],
    ids=["array", "string", "truncated", "no-comma", "items-object", "trailing", "bad-literal", "empty"],
)
def test_what_is_not_a_list_answer_raises_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError, match="nodes list answer is not a Kubernetes list"):
        list(ListBody(chunks(body, 4), "nodes list").items())
