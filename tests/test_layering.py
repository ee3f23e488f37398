"""The package's layers import downward only, and no module imports itself back through others.

The order, bottom to top (CONTRIBUTING.md explains each layer):

    the root modules (errors, checks, files, runtime, ...)
    text -> layers -> generation -> models -> training
    -> tasks -> adaptation -> incontext -> efficiency -> vision   (the features, chapters 4-7)
    -> rlhf -> capstone -> commands -> cli

`generation` sits below `models` as in `transformers`, where every model inherits its `generate`
from the generation package: decoding needs a next-token function, not a particular model.
Every import counts, including those inside functions; only `if TYPE_CHECKING:` blocks are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aigc_book"
ORDER = ["text", "layers", "generation", "models", "training", "tasks", "adaptation", "incontext",
         "efficiency", "vision", "rlhf", "capstone", "commands", "cli", "__main__"]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """-1 for the root modules every layer may use; otherwise the position in ORDER."""
    top = module.split(".")[1] if "." in module else ""
    return ORDER.index(top) if top in ORDER else -1


def imported_modules(path: Path, known: set[str], package_dir: Path = PACKAGE) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and ast.unparse(node.test).endswith("TYPE_CHECKING") for n in ast.walk(node)}
    name = module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("aigc_book")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("aigc_book"):
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, known) for p in paths}


def test_every_import_points_down_the_layers():
    upward = [f"{a} imports {b}" for a, bs in import_graph().items() for b in sorted(bs)
              if layer(b) > layer(a) and b != "aigc_book"]
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_module_imports_itself_back():
    graph = import_graph()
    # A package's __init__ re-exports its modules: an edge into a package means its __init__ only.
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import loops:\n" + "\n".join(cycles)


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    """The tests above could fail: an import of the command line inside a function is found."""
    fake = tmp_path / "aigc_book" / "text" / "corpora.py"
    fake.parent.mkdir(parents=True)
    fake.write_text((PACKAGE / "text" / "corpora.py").read_text() + "\ndef f():\n    from aigc_book.cli import main\n")
    found = imported_modules(fake, {"aigc_book.cli"}, package_dir=tmp_path / "aigc_book")
    assert "aigc_book.cli" in found and layer("aigc_book.cli") > layer("aigc_book.text.corpora")
