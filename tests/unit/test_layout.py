"""The package's import direction (docs/architecture.md, "Layers"): a module imports only from its
own layer or the ones below it, and no modules import each other in a cycle, lazily or not."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "otel_vmi_hv"

# Bottom to top, as docs/architecture.md states them.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "model", "delay_queue", "backoff", "interfaces", "worker", "fields"}),
    frozenset({"config"}),
    frozenset({"detection"}),
    frozenset({"sources"}),
    frozenset({"emulation"}),
    frozenset({"export"}),
    frozenset({"server"}),
    frozenset({"tracker"}),
    frozenset({"detect_report", "agent", "cli", "__main__"}),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every otel_vmi_hv module ``path`` imports, at any depth (lazy and TYPE_CHECKING included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("otel_vmi_hv"):
                found.add(node.module)
                # `from otel_vmi_hv.export import telemetry` names a module, not an attribute.
                named = (f"{node.module}.{alias.name}" for alias in node.names)
                found |= {module for module in named if _is_module(module)}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package uses absolute imports")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("otel_vmi_hv")}
    return found


def _is_module(dotted: str) -> bool:
    base = PACKAGE.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, members in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"{module} is in no layer: add it to docs/architecture.md and LAYERS")


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_points_down_or_sideways_within_a_layer() -> None:
    upward = [
        f"{importer} (layer {_layer(importer)}) imports {imported} (layer {_layer(imported)})"
        for importer, imports in _graph().items()
        for imported in sorted(imports)
        if _layer(imported) > _layer(importer)
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in graph:
                continue
            if state.get(imported) == 1:
                cycles.append(" -> ".join([*path[path.index(imported) :], imported]))
            elif imported not in state:
                visit(imported)
        path.pop()
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module)
    assert cycles == []


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """The two checks above are only worth something if they can fail: both are shown a bad case."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from otel_vmi_hv.agent import Agent\n")
    assert "otel_vmi_hv.agent" in _imports(sample)
    assert _layer("otel_vmi_hv.agent") > _layer("otel_vmi_hv.detection.order")
    assert _layer("otel_vmi_hv.tracker") > _layer("otel_vmi_hv.export.telemetry")
    # The old layout had export.telemetry and tracker importing each other.
    assert "otel_vmi_hv.tracker" not in _graph()["otel_vmi_hv.export.telemetry"]
    assert "otel_vmi_hv.export.telemetry" not in _graph()["otel_vmi_hv.tracker"]


def test_the_folder_listing_shows_the_architecture() -> None:
    """A newcomer finds detection, emulation, the inputs, exposition and the server by folder name."""
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert {"detection", "emulation", "sources", "export", "server", "config"} <= folders
    documented = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [name for name in sorted(folders) if f"`{name}/`" not in documented]
    assert missing == [], "every subpackage has its paragraph in docs/architecture.md"


LONG_FUNCTION = 50  # lines; past this a function says why in a comment starting "# Long:"


def _long_functions(path: Path) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = lines[node.lineno - 1 : node.end_lineno or node.lineno]
            if len(body) > LONG_FUNCTION and not any("# Long:" in line for line in body):
                found.append(f"{path.name}:{node.lineno} {node.name} ({len(body)} lines)")
    return found


def test_no_long_function_without_a_reason() -> None:
    long = [finding for path in sorted(PACKAGE.rglob("*.py")) for finding in _long_functions(path)]
    assert long == []


def test_the_length_check_catches_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(LONG_FUNCTION))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def f():\n{body}")
    assert len(_long_functions(sample)) == 1
    sample.write_text(f"def f():\n    # Long: one table, read best in one place.\n{body}")
    assert _long_functions(sample) == []
