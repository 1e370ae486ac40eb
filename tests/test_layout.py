"""The package's layout: data flows one way, command lines on top, no circles.

Reads every module's imports from its source (nothing is imported), so a rule
broken anywhere fails here with the module and line that break it.
"""

import ast
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jaxlm"

# Bottom to top: a module may import modules of its own layer or below. Within a
# layer, imports must not form a circle (checked separately).
LAYERS = [
    ("jaxlm", "jaxlm.config", "jaxlm.config_io", "jaxlm.params", "jaxlm.malloc", "jaxlm.distributed",
     "jaxlm.registry", "jaxlm.exit_status", "jaxlm.hardware"),
    ("jaxlm.sharding",),
    ("jaxlm.kernels",),
    ("jaxlm.models",),
    ("jaxlm.data",),
    ("jaxlm.tasks",),
    ("jaxlm.run",),
    ("jaxlm.inference",),
    ("jaxlm.train",),
    ("jaxlm.scaling",),
    ("jaxlm.convert",),
    ("jaxlm.cli",),
]
# `python -m jaxlm.<name>` modules: thin aliases of jaxlm/cli/, above everything.
ALIASES = ("jaxlm.main", "jaxlm.generate", "jaxlm.evaluate", "jaxlm.export",
           "jaxlm.seq2seq_generate", "jaxlm.convert.__main__", "jaxlm.scaling.__main__",
           "jaxlm.data.prepare", "jaxlm.data.tokenizer.__main__")


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


MODULES = _modules()


def _where(name: str) -> str:
  path = MODULES[name]
  return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _is_package(name: str) -> bool:
  return MODULES.get(name, pathlib.Path()).name == "__init__.py"


def _imports(name: str):
  """(line, imported jaxlm module, inside a function?, source line) of each import."""
  path = MODULES[name]
  source = path.read_text()
  lines = source.splitlines()
  tree = ast.parse(source)
  in_function = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for inner in ast.walk(node):
        if isinstance(inner, (ast.Import, ast.ImportFrom)):
          in_function.add(id(inner))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        pkg = name if _is_package(name) else name.rpartition(".")[0]
        for _ in range(node.level - 1):
          pkg = pkg.rpartition(".")[0]
        base = f"{pkg}.{base}" if base else pkg
      # `from a import b` imports module a.b where there is one, else names of a.
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                 for a in node.names]
    else:
      continue
    for target in targets:
      yield node.lineno, target, id(node) in in_function, lines[node.lineno - 1].strip()


def _layer(name: str) -> int:
  if name in ALIASES:
    return len(LAYERS)
  for i, prefixes in enumerate(LAYERS):
    if any(name == p or (p != "jaxlm" and name.startswith(p + ".")) for p in prefixes):
      return i
  raise AssertionError(f"{name} is in no layer of tests/test_layout.py; add it to LAYERS")


def _graph() -> dict[str, set[str]]:
  return {name: {t for _, t, _, _ in _imports(name) if t in MODULES and t != name}
          for name in MODULES}


def _upward(name: str) -> list[str]:
  """The imports of module `name` that go up the layers."""
  return [f"{_where(name)}:{line} ({name}, layer {_layer(name)}) imports "
          f"{target} (layer {_layer(target)}): {text}"
          for line, target, _, text in _imports(name)
          if target in MODULES and _layer(target) > _layer(name)]


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle of the graph (module -> modules it imports), or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    path.pop()
    state[node] = 2
    return None

  for name in sorted(graph):
    if name not in state and (found := visit(name)):
      return found
  return None


# jaxlm modules that need an optional dependency to import at all (harness.py subclasses
# lm-eval's model class): the layers above import them inside the function that needs
# them, with a comment, so that nothing else needs that dependency.
OPTIONAL = ("jaxlm.inference.harness",)


def _hidden_imports(name: str) -> list[str]:
  """Imports inside functions of module `name` that are jaxlm's own (they would hide a
  circle; OPTIONAL ones excepted) or any without a comment saying why they are deferred
  (on the line or the three above it)."""
  lines = MODULES[name].read_text().splitlines()
  out = []
  for line, target, inside, text in _imports(name):
    commented = any("#" in lines[i] for i in range(max(line - 4, 0), line))
    if inside and ((target.split(".")[0] == "jaxlm" and target not in OPTIONAL)
                   or not commented):
      out.append(f"{_where(name)}:{line}: {text}")
  return out


def test_every_module_has_a_layer():
  for name in MODULES:
    _layer(name)


def test_imports_go_down_the_layers():
  wrong = [w for name in MODULES for w in _upward(name)]
  assert not wrong, "imports going up the layers:\n" + "\n".join(wrong)


def test_no_import_circles():
  circle = _circle(_graph())
  assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_library_never_imports_a_command_line():
  wrong = [f"{_where(name)}:{line}: {text}"
           for name in MODULES if _layer(name) < _layer("jaxlm.cli")
           for line, target, _, text in _imports(name)
           if target in ALIASES or target == "jaxlm.cli" or target.startswith("jaxlm.cli.")]
  assert not wrong, "library modules importing command lines:\n" + "\n".join(wrong)


def test_imports_inside_functions_only_defer_optional_dependencies():
  wrong = [w for name in MODULES for w in _hidden_imports(name)]
  assert not wrong, ("imports inside functions (jaxlm modules, or optional ones without a "
                     "comment saying why):\n" + "\n".join(wrong))


def test_only_command_lines_define_flags():
  wrong = []
  for name, path in MODULES.items():
    if name == "jaxlm.cli" or name.startswith("jaxlm.cli."):
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if (isinstance(node, ast.Attribute) and node.attr.startswith("DEFINE")
          and isinstance(node.value, ast.Name) and node.value.id == "flags"):
        wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
  assert not wrong, "flags defined outside jaxlm/cli/: " + ", ".join(wrong)


def test_aliases_only_forward_to_the_command_lines():
  for name in ALIASES:
    targets = {t for _, t, _, _ in _imports(name)}
    assert targets and all(t.startswith("jaxlm.cli.") for t in targets), (name, targets)
  # Importing them defines no flags, so they can be imported together.
  code = "import " + ", ".join(ALIASES)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]


def test_params_module_is_a_leaf():
  assert not {t for _, t, _, _ in _imports("jaxlm.params") if t.startswith("jaxlm")}


def test_the_checks_catch_what_they_guard_against(monkeypatch, tmp_path):
  # Each rule above fails on a module that breaks it, so none can pass vacuously.
  up, hidden = tmp_path / "up.py", tmp_path / "hidden.py"
  up.write_text("from jaxlm.train import loop\n")
  hidden.write_text("def f():\n  from jaxlm import config\n\n\ndef g():\n  import scipy\n")
  monkeypatch.setitem(MODULES, "jaxlm.sharding.up", up)
  monkeypatch.setitem(MODULES, "jaxlm.sharding.hidden", hidden)
  assert len(_upward("jaxlm.sharding.up")) == 1
  assert len(_hidden_imports("jaxlm.sharding.hidden")) == 2
  graph = _graph()
  assert _circle(graph) is None
  graph["jaxlm.params"] = {"jaxlm.models.transformer"}  # transformer imports params
  assert _circle(graph)[0] == _circle(graph)[-1]


def test_no_file_holds_two_jobs():
  # A module over ~500 lines usually holds two things (docs/architecture.md, style).
  long = {str(p.relative_to(ROOT)): n for p in MODULES.values()
          if (n := len(p.read_text().splitlines())) > 520}
  assert not long, long


def test_old_command_lines_still_run_as_modules():
  for name in ALIASES:
    assert MODULES[name].is_file(), name
  assert os.path.isfile(PACKAGE / "cli" / "train.py")
