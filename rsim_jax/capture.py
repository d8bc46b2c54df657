"""Capture adapters: any JAX model → a pure function `(params, inputs) -> (output, {layer name: activation})`.

rsim_jax's statistics (`rsim_jax.streaming`) need every layer's activations for a batch, inside one jitted
step, on whatever mesh the batch lives on. A `CapturedModel` is that contract, with four ways to get one:

  capture.nnx_model(model)                  # a Flax NNX module: every submodule's output (`nnx.capture`)
  capture.linen_model(module, variables)    # a Flax Linen module: `apply(..., capture_intermediates=...)`
  capture.function_model(apply_fn, params)  # any `apply_fn(params, inputs) -> {name: activation}`
  capture.rsim_model(model)                 # rsim_jax's own ResNets (their curated `layer_names`)

`capture.auto(model)` picks one. None of them edits the model or flips its mode: call `model.eval()` (NNX) or
pass `train=False` (Linen, as an `apply` keyword) yourself when you want inference-mode BatchNorm/dropout.

Layers come back in *call order* — the order in which the forward pass computes them (post-order: a block's
output after its sublayers) — found once by tracing the function (`jax.make_jaxpr`) and reading which
equation produces each activation. Flax returns intermediates as nested dicts whose order is lost under
`jit` (pytrees sort dict keys), and a CKA heatmap whose rows are sorted by name is unreadable.

Layer names are dotted module paths: `"blocks.3.mlp.fc1"`; a method other than `__call__` adds its name
(`"encoder.embed"`), a value sown with `sow` its sown name, and a module called more than once gets `"[i]"`
per call (`"shared_mlp[0]"`, `"shared_mlp[1]"`). Choose layers with `include`/`exclude` (fnmatch patterns
on the names, e.g. `"blocks.*.mlp"`) and, for modules, `module_types` (e.g. `(nnx.Linear, nnx.Conv)`).
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

Activations = collections.OrderedDict  # layer name → (batch, ...) array, in call order


@dataclasses.dataclass(frozen=True, eq=False)
class CapturedModel:
  """A model as a pure function of its parameters and a batch of inputs.

  Attributes:
    apply: `(params, inputs) -> (output, activations)`: `output` is the model's output (e.g. logits
      `(b, classes)`, or None when the function has none) and `activations` a mapping layer name → `(b, ...)`
      array, in any order; jit-compatible.
    params: the parameters/state pytree `apply` takes (replicated on the mesh by the streaming API).
    name: a label for progress bars and errors.
    ordered: True when `activations` already come in call order (dict insertion order of the function);
      False to order them by data flow (`layer_order`).
  """

  apply: Callable[[Any, Any], tuple[Any, Mapping[str, jax.Array]]]
  params: Any
  name: str = "model"
  ordered: bool = False

  def trace(self, inputs) -> tuple[Any, Activations]:
    """Shapes of the output and of every captured layer for `inputs`, in call order (nothing is computed).

    Returns:
      `(output shape, OrderedDict name → jax.ShapeDtypeStruct)`.
    """
    names, output, acts = _trace(self.apply, self.params, inputs, ordered=self.ordered)
    return output, Activations((n, acts[n]) for n in names)

  def layer_names(self, inputs) -> tuple[str, ...]:
    """The captured layers' names for inputs shaped like `inputs`, in call order."""
    return tuple(self.trace(inputs)[1])

  def __call__(self, inputs) -> tuple[Any, Activations]:
    """Runs the model eagerly: `(output, OrderedDict name → activation)` in call order."""
    names = self.layer_names(inputs)
    output, acts = self.apply(self.params, inputs)
    return output, Activations((n, acts[n]) for n in names)


def layer_order(apply, params, inputs, *, ordered: bool = False) -> tuple[str, ...]:
  """Names of the activations `apply(params, inputs)` returns, in the order the forward pass computes them.

  With `ordered=True` the mapping's own insertion order is kept (as the function built it). Otherwise the
  function is traced to a jaxpr and each activation is ranked by the index of the equation that produces it
  (an input passed through unchanged ranks first); ties — one value under two names, e.g. a `Sequential` and
  its last layer — keep the order in which `apply` listed them.
  """
  return _trace(apply, params, inputs, ordered=ordered)[0]


def _trace(apply, params, inputs, *, ordered: bool):
  """One trace of `apply`: `(names in call order, output shape, {name: activation shape})` (`layer_order`)."""
  recorded: list[tuple[str, ...]] = []

  def leaves(params, inputs):
    output, acts = apply(params, inputs)
    if not isinstance(acts, Mapping):
      raise TypeError(f"The captured function must return (output, mapping of layer name → array), got "
                      f"{type(acts).__name__} as the second element.")
    recorded.append(tuple(acts))  # the insertion order, seen while tracing (jit would sort the keys)
    return [acts[k] for k in acts], output

  closed, (act_shapes, output_shape) = jax.make_jaxpr(leaves, return_shape=True)(params, inputs)
  names = recorded[-1]
  shapes = dict(zip(names, act_shapes))
  if ordered:
    return names, output_shape, shapes
  produced_by = {}
  for index, eqn in enumerate(closed.jaxpr.eqns):
    for var in eqn.outvars:
      produced_by[id(var)] = index
  # The activations are the first outputs of `leaves` (the model output follows them).
  rank = [produced_by.get(id(var), -1) for var in closed.jaxpr.outvars[:len(names)]]
  # A stable sort: ties keep the function's own order (the Flax adapters list inner modules first, so a
  # parent whose output is its last child's value comes after the child).
  return tuple(names[i] for i in sorted(range(len(names)), key=lambda i: rank[i])), output_shape, shapes


def _select(names: Sequence[str], include, exclude) -> list[str]:
  include = [include] if isinstance(include, str) else include
  exclude = [exclude] if isinstance(exclude, str) else (exclude or ())
  chosen = []
  for name in names:
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
      continue
    if any(fnmatch.fnmatchcase(name, p) for p in exclude):
      continue
    chosen.append(name)
  return chosen


def _path_name(path: Sequence[Any]) -> str:
  return ".".join(str(p) for p in path)


def _flatten_captures(tree, batch_size: int | None) -> list[tuple[str, Any, str, str]]:
  """Flax's nested intermediates `{path: {method or sown name: (value per call, ...)}}` → flat entries.

  Returns `(layer name, value, module path, method or sown name)` for array values whose leading axis is
  the batch (others — a scalar loss sown by a module, a pytree of several outputs — are left out: they are
  not per-example activations).
  """
  flat = []

  def visit(node, path):
    if isinstance(node, Mapping):
      for key, value in node.items():
        visit(value, path + (key,))
      return
    calls = node if isinstance(node, tuple) else (node,)
    module_path, leaf = _path_name(path[:-1]), str(path[-1])
    base = module_path if leaf == "__call__" else _path_name(path)
    for i, value in enumerate(calls):
      if not hasattr(value, "shape") or not value.shape or (batch_size is not None and value.shape[0] != batch_size):
        continue
      flat.append((base if len(calls) == 1 else f"{base}[{i}]", value, module_path, leaf))

  visit(tree, ())
  # Inner modules first (deeper paths), so that equal values rank child before parent in `layer_order`.
  depth = lambda path: 0 if not path else path.count(".") + 1  # noqa: E731
  return sorted(flat, key=lambda entry: (-depth(entry[2]), entry[0]))


def _batch_size(inputs) -> int | None:
  leaves = jax.tree.leaves(inputs)
  return int(leaves[0].shape[0]) if leaves and getattr(leaves[0], "ndim", 0) else None


def nnx_model(
    model,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    module_types: type | tuple[type, ...] | None = None,
    methods: Sequence[str] = ("__call__",),
    sown: bool = True,
    call: Callable[[Any, Any], Any] | None = None,
    name: str | None = None,
) -> CapturedModel:
  """A Flax NNX module's submodule outputs, captured with `nnx.capture` (the model is not edited).

  Args:
    model: an `nnx.Module`, in the mode you want (`model.eval()` for inference-mode BatchNorm and dropout).
    include, exclude: fnmatch patterns on layer names (dotted module paths) to keep / drop.
    module_types: keep only outputs of submodules of these types (e.g. `(nnx.Conv, nnx.Linear)`).
    methods: which methods' outputs to capture (method outputs are named by the module path, plus the method
      name for methods other than `__call__`); () captures only values the model `sow`s.
    sown: also keep values the model stores with `self.sow(nnx.Intermediate, name, x)`.
    call: `call(model, inputs) -> output` (default `model(inputs)`); use it for other signatures, e.g.
      `lambda m, b: m(b["tokens"], deterministic=True)`.
    name: a label (default: the class name).

  The root module's own output is the model's `output`, not a layer.
  """
  from flax import nnx  # noqa: PLC0415

  if not isinstance(model, nnx.Module):
    raise TypeError(f"`model` must be an nnx.Module, got {type(model).__name__}; use `linen_model` for Linen "
                    "modules or `function_model` for a plain apply function.")
  call = call or (lambda m, x: m(x))
  types = module_types if module_types is None or isinstance(module_types, tuple) else (module_types,)
  allowed_paths = None
  if types is not None:
    allowed_paths = {_path_name(p) for p, m in nnx.iter_modules(model) if p and isinstance(m, types)}
  graphdef, state = nnx.split(model)
  wanted_methods = set(methods)

  def apply(state, inputs):
    module = nnx.merge(graphdef, state)
    method_outputs = nnx.Intermediate if wanted_methods else None
    output, captured = nnx.capture(lambda m, x: call(m, x), nnx.Intermediate, method_outputs=method_outputs)(
        module, inputs)
    tree = nnx.to_pure_dict(captured)
    modules = {_path_name(p): m for p, m in nnx.iter_modules(module)}
    keep = {}
    for layer, value, module_path, leaf in _flatten_captures(tree, _batch_size(inputs)):
      owner = modules.get(module_path)
      is_method = owner is not None and callable(getattr(type(owner), leaf, None))
      if is_method:
        if leaf not in wanted_methods or (not module_path and leaf == "__call__"):
          continue  # another method, or the root's own output (that is `output`)
        if allowed_paths is not None and module_path not in allowed_paths:
          continue
      elif not sown:
        continue
      keep[layer] = value
    names = _select(list(keep), include, exclude)
    return output, {n: keep[n] for n in names}

  return CapturedModel(apply, state, name or type(model).__name__)


def linen_model(
    module,
    variables,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    module_types: type | tuple[type, ...] | None = None,
    methods: Sequence[str] = ("__call__",),
    method: str | Callable | None = None,
    name: str | None = None,
    **apply_kwargs,
) -> CapturedModel:
  """A Flax Linen module's intermediates, via `module.apply(..., capture_intermediates=filter)`.

  Args:
    module: a `flax.linen.Module`.
    variables: its variables (`{"params": ..., "batch_stats": ...}`).
    include, exclude: fnmatch patterns on layer names (`"Conv_0"`, `"Block_3.Dense_1"`, sown names).
    module_types: keep only outputs of submodules of these Linen types (e.g. `nn.Conv`).
    methods: the methods whose outputs are captured (default `__call__`).
    method: the method `apply` runs (default `__call__`).
    name: a label (default: the class name).
    **apply_kwargs: passed to `apply`, e.g. `train=False` (the mode is yours to choose).

  Values the module `sow`s into the "intermediates" collection are captured too (named by path + sown name).
  """
  import flax.linen as nn  # noqa: PLC0415

  if not isinstance(module, nn.Module):
    raise TypeError(f"`module` must be a flax.linen.Module, got {type(module).__name__}; use `nnx_model` for "
                    "NNX or `function_model` for a plain function.")
  types = module_types if module_types is None or isinstance(module_types, tuple) else (module_types,)
  wanted = set(methods)

  def keep_module(mdl, method_name):
    return method_name in wanted and (types is None or isinstance(mdl, types))

  def apply(variables, inputs):
    output, state = module.apply(variables, inputs, capture_intermediates=keep_module, mutable=["intermediates"],
                                 method=method, **apply_kwargs)
    keep = {layer: value for layer, value, path, leaf in _flatten_captures(state.get("intermediates", {}),
                                                                            _batch_size(inputs))
            if path or leaf != "__call__"}  # the root's own output is `output`
    names = _select(list(keep), include, exclude)
    return output, {n: keep[n] for n in names}

  return CapturedModel(apply, variables, name or type(module).__name__)


def function_model(
    apply_fn: Callable[[Any, Any], Any],
    params: Any,
    *,
    output: str | None = None,
    name: str = "function",
    ordered: bool = True,
) -> CapturedModel:
  """Any `apply_fn(params, inputs)` returning a mapping layer name → `(b, ...)` activation.

  Args:
    apply_fn: returns `{name: activation}` or `(output, {name: activation})`.
    params: its first argument.
    output: with a mapping alone, the key whose value is the model output (for predictions), else None.
    ordered: keep the mapping's insertion order (True: build it in the order you want the rows); False
      orders by data flow, as for Flax modules.
  """

  def apply(params, inputs):
    result = apply_fn(params, inputs)
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
      return result
    if not isinstance(result, Mapping):
      raise TypeError(f"`apply_fn` must return a mapping of layer name → activation (or (output, mapping)), "
                      f"got {type(result).__name__}.")
    if output is not None and output not in result:
      raise ValueError(f"`output`={output!r} is not among the returned layers {list(result)}.")
    return (result[output] if output is not None else None), result

  return CapturedModel(apply, params, name, ordered=ordered)


def rsim_model(model, *, name: str | None = None) -> CapturedModel:
  """rsim_jax's own models (`model(x, capture=True) -> (logits, OrderedDict)`), with their curated layer
  names (`model.layer_names`: residual-block outputs, stem, pooling, logits) in their order.

  The mode is the caller's: `model.eval()` for inference-mode BatchNorm, as the studies do.
  """
  from flax import nnx  # noqa: PLC0415

  if not hasattr(model, "layer_names"):
    raise TypeError(f"{type(model).__name__} is not an rsim_jax model (no `layer_names`); use `nnx_model`.")
  graphdef, state = nnx.split(model)

  def apply(state, images):
    return nnx.merge(graphdef, state)(images, capture=True)

  return CapturedModel(apply, state, name or type(model).__name__, ordered=True)


def auto(model, variables=None, **kwargs) -> CapturedModel:
  """`CapturedModel` as is; an rsim_jax model → `rsim_model`; another NNX module → `nnx_model`; a Linen
  module with `variables` → `linen_model`; a callable with `variables` as params → `function_model`."""
  if isinstance(model, CapturedModel):
    return model
  from flax import nnx  # noqa: PLC0415
  import flax.linen as nn  # noqa: PLC0415

  if isinstance(model, nnx.Module):
    return rsim_model(model, **kwargs) if hasattr(model, "layer_names") else nnx_model(model, **kwargs)
  if isinstance(model, nn.Module):
    if variables is None:
      raise ValueError("A Linen module needs its `variables` to be captured: `capture.auto(module, variables)`.")
    return linen_model(model, variables, **kwargs)
  if callable(model):
    return function_model(model, variables, **kwargs)
  raise TypeError(f"Cannot capture a {type(model).__name__}: pass an NNX or Linen module, or a function.")


def as_numpy(acts: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
  """Activations as host NumPy arrays (same order)."""
  return {k: np.asarray(v) for k, v in acts.items()}
