"""No private name of a dependency outside sdk_state.py: upgrading the SDK must not need its source.

Private means a module path segment or an imported name with a leading underscore
(``opentelemetry.sdk.metrics._internal``, ``_mapping``, ``_encode_attributes``), or an attribute
with a leading underscore read from anything but the agent's own ``self``/``cls``. (Defining
``_receive_metrics``, the method the SDK documents for custom readers to implement, is not reading.)
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "otel_vmi_hv"
ALLOWED = {PACKAGE / "export" / "sdk_state.py"}  # the one module that must, and says why
DEPENDENCIES = ("opentelemetry", "prometheus_client", "kubernetes", "libvirt", "grpc")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(DEPENDENCIES):
            module = node.module or ""
            if any(_private(part) for part in module.split(".")):
                found.append(f"{path.name}:{node.lineno} imports from {module}")
            found += [
                f"{path.name}:{node.lineno} imports {alias.name} from {module}"
                for alias in node.names
                if _private(alias.name)
            ]
        elif isinstance(node, ast.Import):
            found += [
                f"{path.name}:{node.lineno} imports {alias.name}"
                for alias in node.names
                if alias.name.startswith(DEPENDENCIES) and any(_private(p) for p in alias.name.split("."))
            ]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} reads .{node.attr}")
    return found


def test_no_private_names_outside_sdk_state() -> None:
    modules = [p for p in PACKAGE.rglob("*.py") if p not in ALLOWED]
    assert len(modules) > 10
    findings = [finding for module in modules for finding in _findings(module)]
    assert findings == []


def test_the_check_catches_what_it_is_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from opentelemetry.exporter.prometheus._mapping import map_unit\n"
        "from opentelemetry.exporter.otlp.proto.common import _encode_attributes\n"
        "import opentelemetry.sdk.metrics._internal.export\n"
        "def f(exporter):\n    return exporter._preferred_temporality\n"
    )
    assert len(_findings(sample)) == 4
    allowed = PACKAGE / "export" / "sdk_state.py"
    assert _findings(allowed), "sdk_state.py does use internals (it is the allowed one)"
