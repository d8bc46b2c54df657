"""No module reaches into another module's private names (`other_module._name`): what one module needs from
another is that module's public API (issue 14: `extract` and `parallel` used to import `_minibatch_hsic`,
`_sharded_update`, `_validated`, ...)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "rsim_jax"


def _module_aliases(tree: ast.Module) -> set[str]:
  """Names bound to rsim_jax modules by imports in this file (`from rsim_jax.kernels import pca as p` → p)."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rsim_jax"):
      names.update(alias.asname or alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level:  # relative imports
      names.update(alias.asname or alias.name for alias in node.names)
    elif isinstance(node, ast.Import):
      names.update((alias.asname or alias.name).split(".")[0] for alias in node.names
                   if alias.name.startswith("rsim_jax"))
    elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):  # x = importlib.import_module("rsim_jax…")
      call = node.value
      if getattr(call.func, "attr", "") == "import_module" and call.args and isinstance(call.args[0], ast.Constant) \
          and str(call.args[0].value).startswith("rsim_jax"):
        names.update(t.id for t in node.targets if isinstance(t, ast.Name))
  return names


def _violations(path: pathlib.Path) -> list[str]:
  tree = ast.parse(path.read_text())
  modules = _module_aliases(tree)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
      if isinstance(node.value, ast.Name) and node.value.id in modules:
        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value.id}.{node.attr}")
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rsim_jax"):
      # A private *module* (`kernels/_checks.py`) is internal to the package and may be imported; a private
      # function or class of another module may not.
      where = PACKAGE.parent.joinpath(*node.module.split("."))
      found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: from {node.module} import {a.name}"
                for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                and not (where / f"{a.name}.py").exists()]
  return found


def test_the_checker_sees_a_private_access(tmp_path):
  bad = PACKAGE / "_probe_private_access.py"
  try:
    bad.write_text("from rsim_jax import parallel\nfrom rsim_jax.kernels import _checks as c\nparallel._x\n")
    assert len(_violations(bad)) == 1  # `parallel._x`; importing the private module `_checks` is allowed
  finally:
    bad.unlink()


def test_no_module_uses_another_modules_private_names():
  found = [v for path in sorted(PACKAGE.rglob("*.py")) for v in _violations(path)]
  assert not found, "private names used across modules:\n" + "\n".join(found)
