"""Product code size and function length, at two revisions: `python -m bench.code_size [BEFORE] [AFTER]`.

Reads `otel_vmi_hv/` as git stores it at each revision (AFTER defaults to the working tree), so the
table compares like with like whatever is checked out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LONG = 50  # lines; a longer function needs a comment saying why (docs/architecture.md)


@dataclass
class Size:
    modules: int = 0
    folders: int = 0
    lines: int = 0
    functions: int = 0
    longest: tuple[int, str] = (0, "")
    over_long: int = 0
    total_function_lines: int = 0

    def add(self, name: str, source: str) -> None:
        self.modules += 1
        self.lines += len(source.splitlines())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                self.functions += 1
                self.total_function_lines += length
                self.over_long += length > LONG
                self.longest = max(self.longest, (length, f"{name}:{node.name}"))


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def measure(revision: str | None) -> Size:
    size = Size()
    if revision is None:
        paths = [str(p.relative_to(ROOT)) for p in (ROOT / "otel_vmi_hv").rglob("*.py")]
        read = lambda path: (ROOT / path).read_text()  # noqa: E731
    else:
        paths = [
            p
            for p in _git("ls-tree", "-r", "--name-only", revision, "otel_vmi_hv").split()
            if p.endswith(".py")
        ]
        read = lambda path: _git("show", f"{revision}:{path}")  # noqa: E731
    size.folders = len({str(Path(p).parent) for p in paths})
    for path in sorted(paths):
        size.add(path.removeprefix("otel_vmi_hv/"), read(path))
    return size


def run(before: str, after: str | None) -> str:
    sizes = {before: measure(before), after or "working tree": measure(after)}
    rows = [
        "| | " + " | ".join(sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    table = {
        "Python files": lambda s: f"{s.modules}",
        "folders": lambda s: f"{s.folders}",
        "lines (comments and docstrings included)": lambda s: f"{s.lines:,}",
        "functions": lambda s: f"{s.functions}",
        "mean function length (lines)": lambda s: f"{s.total_function_lines / max(s.functions, 1):.1f}",
        f"functions over {LONG} lines": lambda s: f"{s.over_long}",
        "longest function": lambda s: f"{s.longest[0]} ({s.longest[1]})",
    }
    rows += [
        f"| {label} | " + " | ".join(cell(s) for s in sizes.values()) + " |" for label, cell in table.items()
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    print(run(sys.argv[1] if len(sys.argv) > 1 else "HEAD", sys.argv[2] if len(sys.argv) > 2 else None))
