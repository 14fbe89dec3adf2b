"""Product code size and function length, at two revisions: `python -m bench.code_size [BEFORE] [AFTER]`.

Reads `otel_vmi_hv/` as git stores it at each revision (AFTER defaults to the working tree), so the
table compares like with like whatever is checked out.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
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
    code: int = 0  # lines that are neither blank, nor a comment, nor part of a docstring
    threads: int = 0  # places that construct a Thread
    locks: int = 0  # places that construct a Lock, RLock or Condition
    per_file: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, source: str) -> None:
        self.modules += 1
        lines = source.splitlines()
        self.lines += len(lines)
        tree = ast.parse(source)
        skip = {number for number, line in enumerate(lines, 1) if not line.strip()}
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (
                isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                skip |= set(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT and lines[token.start[0] - 1].strip().startswith("#"):
                skip.add(token.start[0])
        self.per_file[name] = len(lines) - len(skip)
        self.code += self.per_file[name]
        code_lines = [line for line in lines if not line.lstrip().startswith("#")]
        self.threads += sum(1 for line in code_lines if re.search(r"\bThread\(", line))
        self.locks += sum(1 for line in code_lines if re.search(r"\b(Lock|RLock|Condition)\(", line))
        for node in ast.walk(tree):
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
        "code lines (no blanks, comments or docstrings)": lambda s: f"{s.code:,}",
        "lines (comments and docstrings included)": lambda s: f"{s.lines:,}",
        "places that construct a Thread": lambda s: f"{s.threads}",
        "places that construct a Lock, RLock or Condition": lambda s: f"{s.locks}",
        "functions": lambda s: f"{s.functions}",
        "mean function length (lines)": lambda s: f"{s.total_function_lines / max(s.functions, 1):.1f}",
        f"functions over {LONG} lines": lambda s: f"{s.over_long}",
        "longest function": lambda s: f"{s.longest[0]} ({s.longest[1]})",
    }
    rows += [
        f"| {label} | " + " | ".join(cell(s) for s in sizes.values()) + " |" for label, cell in table.items()
    ]
    return "\n".join(rows)


def per_folder(revision: str | None) -> str:
    """Code lines per top-level folder of the package (modules at the top count as "top")."""
    folders: dict[str, int] = {}
    for name, code in measure(revision).per_file.items():
        top = name.split("/")[0] if "/" in name else "top"
        folders[top] = folders.get(top, 0) + code
    return "\n".join(f"| {folder} | {code:,} |" for folder, code in sorted(folders.items()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--folders"]:
        print(per_folder(sys.argv[2] if len(sys.argv) > 2 else None))
    else:
        print(run(sys.argv[1] if len(sys.argv) > 1 else "HEAD", sys.argv[2] if len(sys.argv) > 2 else None))
