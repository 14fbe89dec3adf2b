"""No private name of a dependency outside sdk_state.py: upgrading the SDK must not need its source.

Private means a name with one leading underscore, reached in any of these ways:
- a module path segment or an imported name (``opentelemetry.sdk.metrics._internal``, ``_mapping``);
- an attribute read from anything but the code's own ``self``/``cls`` (``exporter._preferred_temporality``;
  defining ``_receive_metrics``, the method the SDK documents for custom readers, is not reading);
- a keyword argument (``client.list_node(_private_option=1)``, or ``**{"_private_option": 1}``);
- a string naming an attribute: ``getattr``/``setattr``/``hasattr``/``delattr``, ``operator.attrgetter``
  and ``methodcaller``, ``vars(obj)["_x"]`` and ``obj.__dict__["_x"]``.

A few names are public although they start with an underscore, because the library documents them
(``DOCUMENTED``). The product may use no other, outside sdk_state.py, the one module that must and
says why. Tests and benchmarks follow the same rule, but can need to look inside the agent (or a
harness class inside its own module): each such use is in ``ALLOWED_OUTSIDE_THE_PRODUCT`` with why.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = "otel_vmi_hv"
SCANNED = (PRODUCT, "tests", "bench", "scripts")
SDK_STATE = f"{PRODUCT}/export/sdk_state.py"  # the one product module allowed (it says why)
DEPENDENCIES = ("opentelemetry", "prometheus_client", "kubernetes", "libvirt", "grpc")

# Public names with a leading underscore: the library documents them for callers.
DOCUMENTED = {
    # kubernetes client: every generated API method documents these keyword arguments, and
    # ``_continue`` stands for the API's ``continue`` (a Python keyword) as an argument and as the
    # attribute of V1ListMeta.
    "_continue",
    "_preload_content",
    "_request_timeout",
    # os._exit, in the standard library's reference: a forked child leaves without the parent's cleanup.
    "_exit",
}

# (file relative to the repository, private name): why a test or benchmark reaches it.
ALLOWED_OUTSIDE_THE_PRODUCT = {
    ("tests/fakes/kube_apiserver.py", "_handle"): (
        "the fake's request-handler class calls into the fake, in its own module"
    ),
    ("tests/fakes/kube_apiserver.py", "_track_connection"): (
        "the same handler class tells the fake of its connections"
    ),
    ("tests/harness/otlp_receiver.py", "_handle"): (
        "the sink's request-handler class calls into the sink, in its own module"
    ),
    ("tests/harness/libvirtd.py", "_own_processes"): (
        "SystemLibvirtDaemon extends the harness's LibvirtDaemon (super())"
    ),
    ("tests/unit/test_prometheus_text.py", "_prometheus"): (
        "the cached /metrics body is compared with a fresh collection by the same reader, "
        "which nothing public exposes"
    ),
    ("bench/exposition.py", "_prometheus"): "times the reader's collection alone, without rendering text",
    ("bench/api_requests.py", "_list_params"): (
        "the baseline ListWatch subclass overrides its list parameters: the previous list shape, "
        "measured against the current one"
    ),
}

ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}  # (obj, "name", ...)
NAMING_FUNCTIONS = {"attrgetter", "methodcaller"}  # ("name" or "a.b", ...), from operator


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the scanned root
    line: int
    name: str
    how: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.how} {self.name}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in DOCUMENTED


def _own(owner: ast.expr) -> bool:
    return isinstance(owner, ast.Name) and owner.id in ("self", "cls")


def _string(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _in_imports(node: ast.AST) -> list[tuple[str, str]]:
    """(name, how) for private parts of a dependency's module path or imported names."""
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(DEPENDENCIES):
        module = node.module or ""
        found = [(part, f"imports from {module}") for part in module.split(".") if _private(part)]
        return found + [(a.name, f"imports from {module}") for a in node.names if _private(a.name)]
    if isinstance(node, ast.Import):
        return [
            (part, f"imports {alias.name}")
            for alias in node.names
            if alias.name.startswith(DEPENDENCIES)
            for part in alias.name.split(".")
            if _private(part)
        ]
    return []


def _in_calls(call: ast.Call) -> list[tuple[str, str]]:
    """(name, how) for private keyword arguments and attribute names given as strings."""
    found = [(k.arg, "passes keyword") for k in call.keywords if k.arg is not None and _private(k.arg)]
    for expanded in (k.value for k in call.keywords if k.arg is None and isinstance(k.value, ast.Dict)):
        keys = [_string(key) for key in expanded.keys]
        found += [(key, "passes keyword") for key in keys if key is not None and _private(key)]
    called = _called_name(call)
    if called in ATTRIBUTE_FUNCTIONS and len(call.args) >= 2 and not _own(call.args[0]):
        name = _string(call.args[1])
        if name is not None and _private(name):
            found.append((name, f"names in {called}()"))
    if called in NAMING_FUNCTIONS:
        for name in filter(None, map(_string, call.args[:1] if called == "methodcaller" else call.args)):
            found += [(part, f"names in {called}()") for part in name.split(".") if _private(part)]
    return found


def _in_namespace_lookup(node: ast.Subscript) -> list[tuple[str, str]]:
    """``vars(obj)["_x"]`` and ``obj.__dict__["_x"]``: an attribute read by its string."""
    owner = node.value
    by_vars = (
        isinstance(owner, ast.Call)
        and _called_name(owner) == "vars"
        and not (owner.args and _own(owner.args[0]))
    )
    by_dict = isinstance(owner, ast.Attribute) and owner.attr == "__dict__" and not _own(owner.value)
    name = _string(node.slice)
    return [(name, "looks up by string")] if (by_vars or by_dict) and name and _private(name) else []


def findings(path: Path, shown_as: str) -> list[Finding]:
    """Every private name ``path`` reaches, reported as ``shown_as``."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[tuple[int, int], Finding]] = []
    for node in ast.walk(tree):
        names = _in_imports(node)
        if isinstance(node, ast.Attribute) and _private(node.attr) and not _own(node.value):
            names.append((node.attr, "reads attribute"))
        elif isinstance(node, ast.Call):
            names += _in_calls(node)
        elif isinstance(node, ast.Subscript):
            names += _in_namespace_lookup(node)
        where = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
        found += [(where, Finding(shown_as, where[0], name, how)) for name, how in names]
    return [finding for _, finding in sorted(found, key=lambda pair: pair[0])]


def scan(root: Path) -> list[Finding]:
    """Findings in the product (but sdk_state.py), tests, benchmarks and scripts under ``root``,
    less what ``ALLOWED_OUTSIDE_THE_PRODUCT`` allows."""
    found: list[Finding] = []
    for folder in SCANNED:
        for path in sorted((root / folder).rglob("*.py")):
            shown_as = path.relative_to(root).as_posix()
            if shown_as != SDK_STATE:
                found += findings(path, shown_as)
    return [f for f in found if (f.path, f.name) not in ALLOWED_OUTSIDE_THE_PRODUCT]


# ------------------------------------------------------------------------------------ the rule


def test_no_private_names_outside_sdk_state() -> None:
    assert len(list((ROOT / PRODUCT).rglob("*.py"))) > 10 and len(list((ROOT / "tests").rglob("*.py"))) > 10
    assert [str(finding) for finding in scan(ROOT)] == []


def test_the_allow_list_is_for_tests_and_benchmarks_only_and_every_entry_is_still_needed() -> None:
    """No product module joins sdk_state.py through the back door; an entry no longer used goes."""
    assert not [path for path, _ in ALLOWED_OUTSIDE_THE_PRODUCT if path.startswith(f"{PRODUCT}/")]
    used = {
        (finding.path, finding.name)
        for path, _ in ALLOWED_OUTSIDE_THE_PRODUCT
        for finding in findings(ROOT / path, path)
    }
    assert set(ALLOWED_OUTSIDE_THE_PRODUCT) - used == set()


def test_sdk_state_is_the_one_that_uses_internals() -> None:
    assert findings(ROOT / SDK_STATE, SDK_STATE), "sdk_state.py does use internals (it is the allowed one)"


# ---------------------------------------------------------- the check on planted examples


def _names(tmp_path: Path, source: str) -> list[tuple[str, str]]:
    sample = tmp_path / "sample.py"
    sample.write_text(source)
    return [(finding.name, finding.how) for finding in findings(sample, "sample.py")]


def test_imports_and_attribute_reads_are_caught(tmp_path: Path) -> None:
    assert _names(
        tmp_path,
        "from opentelemetry.exporter.prometheus._mapping import map_unit\n"
        "from opentelemetry.exporter.otlp.proto.common import _encode_attributes\n"
        "import opentelemetry.sdk.metrics._internal.export\n"
        "def f(exporter):\n    return exporter._preferred_temporality\n"
        "class Reader:\n    def g(self):\n        return self._mine, self.__class__\n",
    ) == [
        ("_mapping", "imports from opentelemetry.exporter.prometheus._mapping"),
        ("_encode_attributes", "imports from opentelemetry.exporter.otlp.proto.common"),
        ("_internal", "imports opentelemetry.sdk.metrics._internal.export"),
        ("_preferred_temporality", "reads attribute"),
    ]


def test_private_keyword_arguments_are_caught_documented_ones_are_not(tmp_path: Path) -> None:
    assert _names(
        tmp_path,
        "client.list_node(_host_index=0, limit=5)\n"
        "client.list_node(**{'_request_auth': token, 'watch': True})\n"
        "client.list_node(_continue=token, _preload_content=False, _request_timeout=(1, 2))\n"
        "client.list_node(**params)\n",
    ) == [("_host_index", "passes keyword"), ("_request_auth", "passes keyword")]


def test_attribute_names_in_strings_are_caught_the_codes_own_are_not(tmp_path: Path) -> None:
    assert _names(
        tmp_path,
        "import operator\n"
        "getattr(reader, '_collect')\n"
        "setattr(provider, '_shutdown', True)\n"
        "hasattr(exporter, '_client')\n"
        "delattr(meter, '_instruments')\n"
        "operator.attrgetter('sdk._state', 'name')(x)\n"
        "operator.methodcaller('_flush', 1)(x)\n"
        "vars(reader)['_lock']\n"
        "reader.__dict__['_queue']\n"
        "getattr(self, '_mine'), vars(self)['_mine'], self.__dict__['_mine']\n"
        "getattr(value, '__name__'), getattr(value, name), vars(obj)['public']\n"
        "operator.methodcaller('render', '_not_a_name')(x)\n",
    ) == [
        ("_collect", "names in getattr()"),
        ("_shutdown", "names in setattr()"),
        ("_client", "names in hasattr()"),
        ("_instruments", "names in delattr()"),
        ("_state", "names in attrgetter()"),
        ("_flush", "names in methodcaller()"),
        ("_lock", "looks up by string"),
        ("_queue", "looks up by string"),
    ]


def test_tests_benchmarks_and_scripts_are_scanned_with_only_the_allow_list_let_through(
    tmp_path: Path,
) -> None:
    planted = {
        f"{PRODUCT}/agent.py": "def f(agent):\n    return agent._server\n",
        SDK_STATE: "from opentelemetry.sdk.metrics._internal import x\n",
        "tests/unit/test_agent.py": "def test_x(agent):\n    assert getattr(agent, '_server')\n",
        "tests/harness/libvirtd.py": "class D(B):\n    def f(self):\n        super()._own_processes()\n",
        "bench/run.py": "def f(client):\n    client.list_node(_host_index=1)\n",
        "scripts/tool.py": "import os\ndef f(x):\n    os._exit(x._code)\n",
    }
    for path, source in planted.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(source)
    assert [str(finding) for finding in scan(tmp_path)] == [
        f"{PRODUCT}/agent.py:2 reads attribute _server",
        "tests/unit/test_agent.py:2 names in getattr() _server",
        "bench/run.py:2 passes keyword _host_index",
        "scripts/tool.py:3 reads attribute _code",
    ]
