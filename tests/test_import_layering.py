"""The layers point down only: no import cycle between modules or top-level packages (importlib strings
counted), and each top-level package imports only the packages below it. The picture (docs/architecture.md):

    canonical, bundled_models                      configs, errors, cache protocol; bundled data
    ane_model, mlx_model, coreml_runtime          the models; running a written Core ML package
    convert                                        checkpoint readers, family registry, exporters
    ondevice                                       runtime, backends, keyboard, CLI, benchmark harness
    benchmarks, training                           scripts on top
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BELOW = {
    "canonical": set(),
    "bundled_models": set(),
    "ane_model": {"canonical"},
    "mlx_model": {"canonical"},
    "coreml_runtime": {"canonical"},
    "convert": {"canonical", "bundled_models", "ane_model", "mlx_model", "coreml_runtime"},
    "ondevice": {"canonical", "bundled_models", "ane_model", "mlx_model", "coreml_runtime", "convert"},
    "benchmarks": {"canonical", "bundled_models", "convert", "ondevice", "coreml_runtime"},
    "training": {"canonical", "bundled_models", "convert", "ondevice"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in BELOW:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                targets = [node.args[0].value]
            for target in targets:
                resolved = resolve(target)
                if resolved and resolved != module:
                    graph[module].add(resolved)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_module_cycles():
    assert _cycles(_import_graph()) == []


def test_no_package_cycles_and_layers_point_down():
    graph = _import_graph()
    packages: dict[str, set[str]] = {}
    upward = []
    for module, targets in graph.items():
        source = module.split(".")[0]
        for target in targets:
            top = target.split(".")[0]
            if top != source:
                packages.setdefault(source, set()).add(top)
                if top not in BELOW[source]:
                    upward.append(f"{module} -> {target}")
    assert _cycles(packages) == []
    assert upward == []


def test_the_cycle_check_sees_importlib_strings(tmp_path):
    """The walker is only worth its verdict if it would see a hidden upward edge."""
    graph = {"a": {"b"}, "b": {"a"}}
    assert _cycles(graph) == [["a", "b"]]
    source = "from importlib import import_module\nimport_module('ondevice.cli')\n"
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)]
    assert calls and calls[0].args[0].value == "ondevice.cli"


def test_cli_help_imports_no_torch_coremltools_or_mlx():
    code = (
        "import sys; from ondevice.cli import app; "
        "print(sorted(m for m in ('torch', 'coremltools', 'mlx', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_registry_and_readers_import_no_model_or_mlx():
    heavy = "('ane_model', 'mlx_model', 'mlx', 'coremltools')"
    code = (
        "import sys; import convert.registry, convert.checkpoint; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
