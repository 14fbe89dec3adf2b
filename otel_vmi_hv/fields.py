"""Reading API objects that arrive as untrusted JSON.

An object from the API server (or a hostile one) may miss any level or hold the wrong type at it;
``field`` walks a path and answers ``default`` instead of raising, so callers state what they need
once instead of checking ``isinstance`` at every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def field(obj: object, *path: str | int) -> Any:
    """The value at ``path`` (keys of mappings, indexes of lists), or None where it is absent."""
    value: Any = obj
    for step in path:
        if isinstance(step, int):
            if not isinstance(value, list) or not -len(value) <= step < len(value):
                return None
            value = value[step]
        elif isinstance(value, Mapping):
            value = value.get(step)
        else:
            return None
    return value


def typed(obj: object, kind: type[T], *path: str | int) -> T | None:
    """``field`` when the value there is a ``kind`` (a ``str``, a ``Mapping``, ...), else None."""
    value = field(obj, *path)
    return value if isinstance(value, kind) else None
