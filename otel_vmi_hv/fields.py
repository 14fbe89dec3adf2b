"""Reading API objects that arrive as untrusted JSON.

An object from the API server (or a hostile one) may miss any level or hold the wrong type at it;
``field`` walks a path and answers ``default`` instead of raising, so callers state what they need
once instead of checking ``isinstance`` at every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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


def mapping(obj: object, *path: str | int) -> Mapping[str, Any]:
    """The mapping at ``path``, or an empty one where it is absent or not a mapping."""
    value = field(obj, *path)
    return value if isinstance(value, Mapping) else {}


def text(obj: object, *path: str | int) -> str | None:
    """The string at ``path``, or None where it is absent or not a string."""
    value = field(obj, *path)
    return value if isinstance(value, str) else None


def items(obj: object, *path: str | int) -> list[Any]:
    """The list at ``path``, or an empty one where it is absent or not a list."""
    value = field(obj, *path)
    return value if isinstance(value, list) else []
