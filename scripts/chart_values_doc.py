"""The Helm chart's values table in docs/kubernetes.md, generated from the chart's values.yaml.

values.yaml documents each value with a `# --` comment above it (helm-docs' convention); a documented
mapping or list is one row, its default shown whole. `make docs` rewrites the table between its
markers; tests/unit/test_chart_values_doc.py fails when it is stale or a value has no comment.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "charts" / "otel-vmi-hv" / "values.yaml"
DOC = ROOT / "docs" / "kubernetes.md"
BEGIN = "<!-- BEGIN CHART VALUES: generated from values.yaml by `make docs` -->\n"
END = "<!-- END CHART VALUES -->"
_KEY = re.compile(r"^( *)([A-Za-z_][\w.-]*):")


def documented(text: str) -> dict[str, str]:
    """Dotted path of each value with a `# --` comment, to that comment (continuation lines joined)."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    comment: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped.removeprefix("# --").strip()]
        elif stripped.startswith("#") and comment is not None:
            comment.append(stripped.removeprefix("#").strip())
        elif key := _KEY.match(line):
            indent = len(key.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key.group(2)))
            if comment is not None:
                found[".".join(name for _, name in stack)] = " ".join(comment)
            comment = None
        elif not stripped.startswith("- "):
            comment = None
    return found


def leaves(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values that are not a non-empty mapping."""
    if isinstance(values, dict) and values:
        return [leaf for key, value in values.items() for leaf in leaves(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def undocumented(text: str) -> list[str]:
    """Values without a description of their own or of a mapping they belong to."""
    described = documented(text)
    return [
        leaf
        for leaf in leaves(yaml.safe_load(text))
        if not any(leaf == path or leaf.startswith(path + ".") for path in described)
    ]


def default(values: Any, path: str) -> str:
    for key in path.split("."):
        values = values[key]
    return json.dumps(values, separators=(", ", ": "))


def table(text: str) -> str:
    values = yaml.safe_load(text)
    rows = ["| value | default | what it does |", "|---|---|---|"]
    for path, description in documented(text).items():
        cell = description.replace("|", "\\|")
        rows.append(f"| `{path}` | `{default(values, path)}` | {cell} |")
    return "\n".join(rows) + "\n"


def with_table(doc: str, values_text: str) -> str:
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:start] + table(values_text) + doc[end:]


if __name__ == "__main__":
    DOC.write_text(with_table(DOC.read_text(encoding="utf-8"), VALUES.read_text(encoding="utf-8")))
