"""The house's layout, checked so that it cannot regress: the library never imports a command, and
no chain of imports between the project's modules comes back to where it started."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The commands: argparse front ends over the library, run as `python -m ...` (Makefile targets);
# nothing imports them but the tests.
COMMANDS = {"train.dog_emotion", "train.reproduce", "train.results", "train.eda", "train.prepare_data",
            "benchmark.bench", "export.export", "train.bank", "train.learning_curve"}


def project_modules() -> dict[str, Path]:
    files = [REPO / "mobile_model.py", *(p for d in ("train", "export", "benchmark") for p in (REPO / d).glob("*.py"))]
    return {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in files}


def imports_of(path: Path, modules: dict) -> set[str]:
    """Every project module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in modules}


def test_no_library_module_imports_a_command():
    modules = project_modules()
    assert COMMANDS <= set(modules), "a command module was renamed: update COMMANDS"
    offenders = {name: sorted(imports_of(path, modules) & COMMANDS) for name, path in modules.items()}
    assert {n: c for n, c in offenders.items() if c} == {}


def test_no_import_cycle_among_the_projects_modules():
    modules = project_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
