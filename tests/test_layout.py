"""The layout shows the architecture: no import cycle, entrypoints that do not import each other, analysis
without the training loop, no module taking another's private names; and the sizes of #21: functions that fit on
a screen (60 lines), modules of at most 400 lines, at most 8 parameters. Read from the source with ``ast``."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("date", "analysis")
ENTRYPOINTS = ("date.train", "date.evaluate", "date.predict", "date.export", "date.bench",
               "analysis.convergence", "analysis.duplicates")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
MAX_PARAMETERS = 8  # of a function or constructor, self / cls aside
MAX_TRAINER_PARAMETERS = 5  # Trainer.__init__: a run context, not every part of a run


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in MODULES and t != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return None


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_import_graph_has_no_cycle():
    assert len(MODULES) > 30 and GRAPH["date.train"]  # the graph was read
    assert _cycle() is None, f"import cycle: {' -> '.join(_cycle())}"


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_entrypoints_do_not_import_each_other(entrypoint):
    assert not (_reachable(entrypoint) & (set(ENTRYPOINTS) - {entrypoint}))


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("analysis")])
def test_analysis_needs_no_training_loop(module):
    training = {m for m in MODULES if m.startswith("date.training")} | {"date.train"}
    assert len(training) > 5 and not (_reachable(module) & training), module


def test_the_method_does_not_depend_on_the_runtime():
    method = ["date.assign", "date.losses", "date.box_ops", "date.criterion", "date.modeling.detector",
              "date.modeling.head", "date.modeling.backbone"]
    for module in method:
        assert not {m for m in _reachable(module) if m.startswith("date.runtime")}, module


def test_no_function_is_longer_than_a_screen():
    too_long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert not too_long, too_long


def test_no_module_is_longer_than_a_room():
    too_long = {str(path.relative_to(REPO)): n for path in MODULES.values()
                if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not too_long, too_long


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)] + [p.arg for p in (a.vararg, a.kwarg) if p]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def test_no_function_takes_more_than_eight_parameters():
    crowded = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and len(_parameters(node)) > MAX_PARAMETERS:
                crowded.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} {_parameters(node)}")
    assert not crowded, crowded


def test_the_trainer_takes_a_run_context_not_every_part_of_a_run():
    tree = ast.parse((REPO / "date" / "training" / "trainer.py").read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    init = next(n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert len(_parameters(init)) <= MAX_TRAINER_PARAMETERS, _parameters(init)


def test_the_limits_see_a_violation():
    """The checks above would fail on code that breaks them (they are not vacuous)."""
    crowded = ast.parse("def f(self, a, b, c, d, e, f, g, h, i): pass").body[0]
    assert _parameters(crowded) == list("abcdefghi") and len(_parameters(crowded)) > MAX_PARAMETERS
    assert len(_parameters(ast.parse("def f(*args, **kw): pass").body[0])) == 2
    assert any(p.name == "synthetic" for p in MODULES["date.data.synthetic"].parents) and len(MODULES) > 50


def _private_imports(name: str, path: Path) -> list[str]:
    """Where ``name`` takes another project module's private name: ``from x import _y``, or ``x._y`` with ``x`` a
    project module it imported (``import date.x as x``, ``from date import x``); dunders are public."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    private = lambda attr: attr.startswith("_") and not attr.startswith("__")  # noqa: E731
    found, aliases = [], {}  # aliases: local name -> the project module it is bound to
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
                elif base in MODULES and base != name and private(alias.name):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} from {base} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = ast.unparse(node.value)
            module = aliases.get(owner, owner)  # a dotted path (date.runtime.tracking._x) is its own name
            if module in MODULES and module != name:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {owner}.{node.attr}")
    return found


def test_no_module_takes_another_modules_private_names():
    """What modules share is public: a private name (``_x``) is its own module's, free to change without a look
    elsewhere."""
    found = [hit for name, path in MODULES.items() for hit in _private_imports(name, path)]
    assert not found, found
