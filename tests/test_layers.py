"""The package's layers: no import circle between modules, and arrows that point down only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "zutiscli"

#: what each layer may import of ours (besides itself and the top-level errors, _version and
#: config_fields modules, which import nothing of ours)
ALLOWED = {
    "ops": set(),
    "artefacts": {"ops"},
    "models": {"ops", "artefacts"},
    "data": {"ops", "artefacts", "models"},
    "shapes": {"ops", "artefacts", "models", "data"},
    "engine": {"ops", "artefacts", "models", "data", "methods"},
    "methods": {"ops", "artefacts", "models", "data", "engine"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for type checkers only)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                pending.extend(child.orelse)
                continue
            pending.append(child)


def imports() -> dict[str, set[str]]:
    """Module -> the zutiscli modules it imports, at module level or inside functions."""
    graph: dict[str, set[str]] = {}
    modules = {module_name(path) for path in PACKAGE.rglob("*.py")}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        found: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zutiscli"):
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("zutiscli"))
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def test_no_import_circle():
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, f"modules that import each other: {circles}"


#: single modules a lower layer may use: the class-name query type is plain data
EXCEPTIONS = {"zutiscli.data.classes"}


def test_arrows_point_down():
    wrong = []
    for module, targets in imports().items():
        layer = module.split(".")[1] if module.count(".") else ""
        if layer not in ALLOWED:
            continue
        for target in targets:
            other = target.split(".")[1] if target.count(".") else ""
            if other not in (layer, "errors", "_version", "config_fields") and other not in ALLOWED[layer] and target not in EXCEPTIONS:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers (cli -> pipeline -> engine/methods -> models, data, ops, " \
                      f"artefacts): {sorted(wrong)}"


def test_every_stage_has_one_signature_shape():
    """``stage(config, output=None, *, progress=None, log=None) -> result``: the command line, the
    Python API and the demo call every stage the same way."""
    import inspect

    from zutiscli.data.datasets import prepare_dataset
    from zutiscli.pipeline.cluster import cluster
    from zutiscli.pipeline.copypaste import copypaste
    from zutiscli.pipeline.demo import run_demo
    from zutiscli.pipeline.evaluate import evaluate
    from zutiscli.pipeline.index import build_index
    from zutiscli.pipeline.predict import predict
    from zutiscli.pipeline.pseudolabel import run_pseudolabel
    from zutiscli.pipeline.retrieve import retrieve
    from zutiscli.pipeline.synth import write_synth
    from zutiscli.pipeline.train import train

    keyword = inspect.Parameter.KEYWORD_ONLY
    for stage in (write_synth, build_index, retrieve, run_pseudolabel, cluster, copypaste, train, predict, evaluate,
                  prepare_dataset, run_demo):
        parameters = list(inspect.signature(stage).parameters.values())
        assert [p.name for p in parameters[:2]] == ["config", "output"], stage.__name__
        assert parameters[1].default is None, stage.__name__
        named = {p.name: p for p in parameters[2:]}
        assert all(p.kind is keyword for p in parameters[2:]), stage.__name__
        assert {"progress", "log"} <= set(named) and named["progress"].default is None, stage.__name__
