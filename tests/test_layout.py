"""The package's layering: its modules import each other without a cycle,
counting imports inside functions (a cycle hidden in a function still ties
two modules together, and breaks the day someone moves the import up)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_graph(root: str = ROOT,
                 package: str = "bidigen") -> dict[str, set[str]]:
  """{module: the ``package`` modules it imports anywhere in its code},
  relative imports (``from . import x``) included."""
  files = {}
  for folder, _, names in os.walk(os.path.join(root, package)):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        files[module.removesuffix(".__init__")] = path
  graph = {}
  for module, path in files.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    # The package a relative import starts from.
    here = module.split(".")[:None if path.endswith("__init__.py") else -1]
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = here[:len(here) - node.level + 1]
          base = ".".join(up + ([base] if base else []))
        for a in node.names:  # `from bidigen import x`: module x.
          full = f"{base}.{a.name}"
          deps.add(full if full in files else base)
    graph[module] = {d for d in deps if d in files and d != module}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Each cycle a depth-first search meets, as the modules around it."""
  state, path, found = {}, [], []

  def visit(u):
    state[u] = "open"
    path.append(u)
    for v in sorted(graph[u]):
      if state.get(v) == "open":
        found.append(path[path.index(v):] + [v])
      elif v not in state:
        visit(v)
    path.pop()
    state[u] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module)
  return found


def test_modules_import_each_other_without_a_cycle():
  graph = import_graph()
  assert {"bidigen.sample", "bidigen.models.taef2",
          "bidigen.pretrained"} <= set(graph)
  assert "bidigen.pretrained" in graph["bidigen.models.taef2"]
  assert cycles(graph) == []
  # The search finds one when there is one.
  assert cycles({**graph, "bidigen.pretrained": {"bidigen.models.taef2"}})


def test_the_graph_sees_imports_inside_functions_and_relative_ones(
    tmp_path):
  """A package whose one cycle is hidden in a function through a relative
  import: the graph holds it, and the search finds it."""
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from pkg.sub import b\n")
  (pkg / "sub" / "b.py").write_text("def f():\n  from .. import a\n")
  (pkg / "sub" / "c.py").write_text("from . import b\n")
  graph = import_graph(str(tmp_path), "pkg")
  assert graph["pkg.a"] == {"pkg.sub.b"}
  assert graph["pkg.sub.b"] == {"pkg.a"}
  assert graph["pkg.sub.c"] == {"pkg.sub.b"}
  assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
