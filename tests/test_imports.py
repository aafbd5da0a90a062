"""Imports run one way: no module of the package imports, at any depth, one that imports it back. Imports inside
functions count (they only put the circle off until the call); those under `if TYPE_CHECKING:` do not. A
package's `__init__` is a module of its own: `from pipeline.x import name` imports it where `name` is not a
module, and importing `pipeline.x.y` runs `pipeline/x/__init__.py` first (a submodule's import of its own
package's `__init__`, which Python has always run before it, is not counted)."""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline

ROOT = Path(pipeline.__file__).parent

def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` (at `path`) imports, each as the longest known prefix of what it names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree)
               if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
               for statement in block.body for node in ast.walk(statement)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            while target and target != name and not name.startswith(f"{target}."):  # and the packages it is in
                out.add(target)  # (their `__init__`s run first), but for those the importer is in itself
                target = target.rpartition(".")[0]
    return out


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, without recursion)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], set(), 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.add(frozenset(group))
    return found


def test_imports_make_no_circles():
    known = modules()
    found = circles({name: imported(path, name, known) for name, path in known.items()})
    assert not found, f"import circles: {[sorted(c) for c in found]}"


def test_circles_are_found_through_imports_in_functions_and_package_inits_but_not_type_checking(tmp_path):
    (tmp_path / "a.py").write_text("from pipeline import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pipeline import a\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline import a\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "__init__.py").write_text("def f():\n    from pipeline import c\n")
    (tmp_path / "d" / "e.py").write_text("from pipeline.d import f\n")  # its own package: not counted
    (tmp_path / "d" / "g.py").write_text("x = 1\n")
    (tmp_path / "c.py").write_text((tmp_path / "c.py").read_text() + "from pipeline.d.g import x\n")  # runs d first
    known = {f"pipeline.{n}": tmp_path / f"{n}.py" for n in "abc"}
    known |= {"pipeline.d": tmp_path / "d" / "__init__.py", "pipeline.d.e": tmp_path / "d" / "e.py",
              "pipeline.d.g": tmp_path / "d" / "g.py"}
    graph = {name: imported(path, name, known) for name, path in known.items()}
    assert graph == {"pipeline.a": {"pipeline.b"}, "pipeline.b": {"pipeline.a"},
                     "pipeline.c": {"pipeline.d.g", "pipeline.d"}, "pipeline.d": {"pipeline.c"}, "pipeline.d.e": set(),
                     "pipeline.d.g": set()}
    assert circles(graph) == {frozenset({"pipeline.a", "pipeline.b"}), frozenset({"pipeline.c", "pipeline.d"})}
