"""The fence around Ray's internals: only orchestrator/ray_support/ reaches a private module of Ray or an
underscore attribute of something imported from Ray, or reads Ray's error text. An AST walk over every module, so
a function-level import counts too; `make lint` runs it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrator"
FENCE = PACKAGE / "ray_support"


def _private(dotted: str) -> bool:
    """ray._private, ray._raylet, ray.train.v2._internal, ...: a component after `ray` that starts with one
    underscore (a dunder is public)."""
    parts = dotted.split(".")
    return parts[0] == "ray" and any(p.startswith("_") and not p.startswith("__") for p in parts[1:])


def _ray_texts() -> tuple[str, ...]:
    """Every piece of Ray's error text hpo reads (ray_compat/errors.py says which): read from its source, so this
    check imports nothing of Ray."""
    tree = ast.parse((FENCE / "ray_compat" / "errors.py").read_text())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = node.value
    texts = []
    for item in values["RAY_TEXTS"].elts:
        if isinstance(item, ast.Starred):  # *NAME: a tuple of texts (its first item may be an HTTP status)
            texts += [e.value for e in values[item.value.id].elts if not e.value.isdigit()]
        elif isinstance(item, ast.Name):
            texts.append(values[item.id].value)
        else:
            texts.append(item.value)
    return tuple(texts)


RAY_TEXTS = _ray_texts()


def crossings(source: str, filename: str = "<module>") -> list[str]:
    """`file:line what` for each reach past the fence in `source`."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    from_ray: set[str] = set()  # local names bound to Ray's modules or objects
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{filename}:{node.lineno} imports {alias.name}")
                if alias.name == "ray" or alias.name.startswith("ray."):
                    from_ray.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ray" or node.module.startswith("ray."):
                for alias in node.names:
                    if _private(f"{node.module}.{alias.name}"):
                        found.append(f"{filename}:{node.lineno} imports {node.module}.{alias.name}")
                    from_ray.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [
                f"{filename}:{node.lineno} reads Ray's text {t!r}" for t in RAY_TEXTS if t in node.value
            ]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in from_ray:
                found.append(f"{filename}:{node.lineno} reaches {ast.unparse(node)}")
    return found


def test_only_ray_support_reaches_rays_internals():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if FENCE in path.parents:
            continue
        found += crossings(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert not found, "Ray's internals are reached from ray_support/ only:\n" + "\n".join(found)


def test_the_fence_check_sees_each_way_past_it():
    """The check itself: each form it must catch, and what it must let through."""
    caught = crossings(
        "import ray._private.services\n"
        "from ray._raylet import GcsClient\n"
        "from ray.train.v2._internal import util\n"
        "import ray\n"
        "def f():\n"
        "    from ray.tune import experiment\n"
        "    return ray._private.worker, experiment.trial._something\n"
        "def g(error):\n"
        "    return 'worker process has died' in str(error)\n"
    )
    assert len(caught) == 6, caught
    assert "worker process has died" in RAY_TEXTS and "Authentication required" in RAY_TEXTS, RAY_TEXTS
    assert crossings("import ray\nfrom ray import tune\nx = tune.report, ray.__version__, obj._mine\n") == []


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports, every import counted (function-level ones too)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return cycles


def test_no_import_circle_anywhere():
    """Issue 34's count: no module of the package reaches itself through imports, function-level ones included."""
    graph = import_graph()
    assert len(graph) >= 100 and graph["orchestrator.launch.pool"] >= {"orchestrator.launch.pool.relay"}
    assert import_cycles(graph) == [], import_cycles(graph)
    # the count itself sees a circle, also through a package and a late import
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
