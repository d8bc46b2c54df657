"""Dataclass configs from the command line: dotted overrides, a stable JSON form, and the resume rule.

    rsim study wide_deep --config local --set train.num_epochs=40 --set widths=[1,2,4] --workdir runs/x
    python -m rsim_jax.train --config FILE.py:local --set model_kwargs.depth=56 --workdir runs/r56

`apply_overrides(cfg, ["a.b=VALUE", ...])` is the `--config.field=value` of big_vision and the Flax examples,
for the frozen dataclass configs of `rsim_jax.train.TrainConfig` and of the studies:

- a dotted path walks into dataclass fields and into dict-valued fields (`train.num_epochs` is a key of a
  study's `train` dict; `ablations.zeroinit.warmup_epochs` a key two dicts down). A dict that holds keyword
  arguments of a class (a field made with `kwargs_of`, e.g. a study's `train`, which feeds `TrainConfig`)
  accepts only that class's fields (and the declared extra keys), so a typo is an error, not an unused key;
- VALUE is JSON (`40`, `0.1`, `true`, `null`, `[1, 2]`, `{"depth": 56}`), else the bare string (`cifar10`);
  JSON lists become tuples, and an integer is accepted where a float is expected;
- the value must fit the field's annotation (else, for keys of free-form dicts, the type of the value it
  replaces): a ValueError names the path, the expected type and the value; an unknown field or key names the
  close matches (difflib) and the known names.

`check_resume(workdir, cfg)` writes the effective config to `<workdir>/study_config.json` on the first run and
refuses a later run in the same directory whose config differs in a field that changes the results (each
differing field is listed, old → new). A config class lists the dotted paths that do not change its results in
a class attribute `RUN_ONLY_FIELDS` (progress bars, logging and checkpoint intervals, device counts); those may
differ. `rsim_jax.train` applies the same rule to a training run's `config.json`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import importlib
import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rsim_jax import io

STUDY_CONFIG_FILE = "study_config.json"
KWARGS_OF = "rsim_kwargs_of"  # dataclass field metadata key: (class or "module:Class", {extra key: type})


class _Absent:
  """A key that one of two configs lacks (printed as `(absent)`)."""

  def __repr__(self) -> str:
    return "(absent)"


ABSENT = _Absent()


def kwargs_of(cls: type | str, *, extra_keys: Mapping[str, Any] | None = None, **field_kwargs) -> Any:
  """A dataclass field holding keyword arguments of `cls` (a class, or `"module:Class"` imported when an
  override first needs it, which keeps heavy imports out of a config module).

  `apply_overrides` accepts as keys of this dict the dataclass fields of `cls`, typed by their annotations, and
  `extra_keys` (name → type: keys the owner consumes itself before calling `cls`, e.g. wide_deep's
  `train_examples`). `field_kwargs` go to `dataclasses.field` (`default_factory=...`).
  """
  return dataclasses.field(metadata={KWARGS_OF: (cls, dict(extra_keys or {}))}, **field_kwargs)


# --- Parsing and type checking ---


def parse_assignment(assignment: str) -> tuple[str, Any]:
  """`"a.b=VALUE"` → `("a.b", value)`, VALUE parsed as JSON, else taken as the bare string."""
  path, sep, raw = assignment.partition("=")
  path = path.strip()
  if not sep or not path:
    raise ValueError(f"Override {assignment!r} is not of the form field=value (e.g. train.num_epochs=40, "
                     "widths=[1,2,4], data=cifar10).")
  try:
    value = json.loads(raw)
  except json.JSONDecodeError:
    value = raw
  return path, value


def freeze(value: Any) -> Any:
  """JSON lists → tuples, recursively (configs are frozen and compare equal after a JSON round trip); mapping
  keys become strings."""
  if isinstance(value, Mapping):
    return {str(k): freeze(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(freeze(v) for v in value)
  return value


def _kind(value: Any) -> str:
  if value is None:
    return "null"
  if isinstance(value, (list, tuple)):
    return "list"
  if isinstance(value, Mapping):
    return "dict"
  return type(value).__name__


def _describe(hint: Any, *, article: bool = True) -> str:
  """An annotation in words: "an integer", "a list of integer", "[integer, integer]", "a number or null"."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return " or ".join(_describe(a, article=article) for a in args)
  if origin in (tuple, list, collections.abc.Sequence) or hint in (tuple, list, Sequence):
    if len(args) == 2 and args[1] is Ellipsis:
      return ("a list of " if article else "list of ") + _describe(args[0], article=False)
    if args:
      return "[" + ", ".join(_describe(a, article=False) for a in args) + "]"
    return "a list" if article else "list"
  if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
    return "a dict" if article else "dict"
  words = {type(None): ("null", "null"), bool: ("true or false", "bool"), int: ("an integer", "integer"),
           float: ("a number", "number"), str: ("a string", "string"), Any: ("anything", "anything")}
  if hint in words:
    return words[hint][0 if article else 1]
  return getattr(hint, "__name__", str(hint))


class _Mismatch(Exception):
  pass


def _coerce(value: Any, hint: Any) -> Any:
  """`value` as the annotation `hint` says (lists → tuples, recursively), or `_Mismatch`."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is Any:
    return freeze(value)
  if origin in (typing.Union, types.UnionType):
    for arg in args:  # in order: `int | float` keeps an int an int
      try:
        return _coerce(value, arg)
      except _Mismatch:
        pass
    raise _Mismatch
  if hint is type(None):
    if value is None:
      return None
    raise _Mismatch
  if hint is bool:
    if isinstance(value, bool):
      return value
    raise _Mismatch
  if hint is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    raise _Mismatch
  if hint is float:  # an int is a float here (PEP 484's numeric tower) and is kept as written
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return value
    raise _Mismatch
  if hint is str:
    if isinstance(value, str):
      return value
    raise _Mismatch
  if origin in (tuple, list, collections.abc.Sequence) or hint in (tuple, list, Sequence):
    if not isinstance(value, (list, tuple)):
      raise _Mismatch
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_coerce(v, args[0]) for v in value)
    if args:
      if len(args) != len(value):
        raise _Mismatch
      return tuple(_coerce(v, a) for v, a in zip(value, args))
    return freeze(value)
  if origin in (dict, collections.abc.Mapping) or hint in (dict, Mapping):
    if not isinstance(value, Mapping):
      raise _Mismatch
    inner = args[1] if len(args) == 2 else Any
    return {str(k): _coerce(v, inner) for k, v in value.items()}
  return freeze(value)  # an annotation this checker does not model: accepted as is


def _hint_of_value(current: Any) -> Any:
  """The type a free-form dict's existing value asks of its replacement (`Any` where there is none or it is
  null)."""
  if current is None or current is ABSENT:
    return Any
  if isinstance(current, bool):
    return bool
  if isinstance(current, int):
    return int
  if isinstance(current, float):
    return float
  if isinstance(current, str):
    return str
  if isinstance(current, (list, tuple)):
    return tuple
  if isinstance(current, Mapping):
    return Mapping[str, Any]
  return Any


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
  """The resolved field annotations of a dataclass (empty where they do not resolve)."""
  try:
    return typing.get_type_hints(cls)
  except Exception:  # noqa: BLE001 - an unresolvable annotation: fall back to the current values' types
    return {}


def _resolve(cls: type | str) -> type:
  if isinstance(cls, str):
    module, _, name = cls.partition(":")
    return getattr(importlib.import_module(module), name)
  return cls


def _suggest(key: str, names: Iterable[str]) -> str:
  names = sorted(names)
  close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
  hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
  return f"{hint} Known: {', '.join(names)}."


class _Override:
  """One `path=value` being applied: its errors name it."""

  def __init__(self, assignment: str):
    self.assignment = assignment

  def error(self, message: str) -> ValueError:
    return ValueError(f"Override {self.assignment!r}: {message}")

  def coerce(self, where: str, value: Any, hint: Any) -> Any:
    try:
      return _coerce(value, hint)
    except _Mismatch:
      advice = ""
      if isinstance(value, str):
        advice = (" VALUE is parsed as JSON (lists [1, 2], true/false, null, dicts {\"k\": 1}); a value that is "
                  "not JSON is taken as a string.")
      raise self.error(f"{where} must be {_describe(hint)}; got {json.dumps(value, default=str)} "
                       f"({_kind(value)}).{advice}") from None


def _check_kwargs(op: _Override, where: str, value: Mapping, schema) -> dict:
  """A whole dict of keyword arguments of `schema`'s class: every key known, every value of its type."""
  cls, extra = _resolve(schema[0]), schema[1]
  out = {}
  for key, item in value.items():
    hint = _kwarg_hint(op, f"{where}.{key}", key, cls, extra)
    out[key] = op.coerce(f"{where}.{key}", item, hint)
  return out


def _kwarg_hint(op: _Override, where: str, key: str, cls: type, extra: Mapping[str, Any]) -> Any:
  fields = {f.name for f in dataclasses.fields(cls)}
  if key in extra:
    return extra[key]
  if key not in fields:
    raise op.error(f"{where}: {key!r} is not a field of {cls.__name__} (this dict holds its keyword arguments)."
                   + _suggest(key, fields | set(extra)))
  return _hints(cls).get(key, Any)


def _set(op: _Override, node: Any, keys: Sequence[str], value: Any, *, hint: Any, schema, where: str) -> Any:
  """`node` with `value` at `keys` (dataclass fields, dict keys); `hint` is `node`'s annotation and `schema`
  its `kwargs_of` declaration, if any."""
  key, rest = keys[0], keys[1:]
  path = f"{where}.{key}" if where else key
  if dataclasses.is_dataclass(node) and not isinstance(node, type):
    fields = {f.name: f for f in dataclasses.fields(node)}
    if key not in fields:
      raise op.error(f"{type(node).__name__} has no field {key!r}." + _suggest(key, fields))
    child_hint = _hints(type(node)).get(key, _hint_of_value(getattr(node, key)))
    child_schema = fields[key].metadata.get(KWARGS_OF)
    current = getattr(node, key)
    if rest:
      new = _set(op, current, rest, value, hint=child_hint, schema=child_schema, where=path)
    else:
      new = op.coerce(path, value, child_hint)
      if child_schema is not None and isinstance(new, Mapping):
        new = _check_kwargs(op, path, new, child_schema)
    try:
      return dataclasses.replace(node, **{key: new})
    except (ValueError, TypeError) as e:  # the config's own validation (`__post_init__`)
      raise op.error(str(e)) from None
  if isinstance(node, Mapping):
    current = node.get(key, ABSENT)
    child_schema = None
    if schema is not None:
      child_hint = _kwarg_hint(op, path, key, _resolve(schema[0]), schema[1])
    else:
      args = typing.get_args(hint)
      declared = args[1] if len(args) == 2 and typing.get_origin(hint) in (dict, collections.abc.Mapping) else Any
      child_hint = declared if declared is not Any else _hint_of_value(current)
    if rest:
      if current is ABSENT:
        current = {}
      new = _set(op, current, rest, value, hint=child_hint, schema=child_schema, where=path)
    else:
      new = op.coerce(path, value, child_hint)
    return {**node, key: new}
  raise op.error(f"{where} is {json.dumps(node, default=str)} ({_kind(node)}), not a config or a dict, so it has no "
                 f"{key!r}; set {where} whole ({where}=VALUE).")


def apply_overrides(cfg: Any, assignments: Iterable[str]) -> Any:
  """`cfg` (a frozen dataclass) with each `"dotted.path=VALUE"` applied in order (see the module docstring).

  Every replaced dataclass runs its `__post_init__` validation again. Raises ValueError naming the override,
  the path, and the fix: an unknown field or key (with close matches), a value of the wrong type, a path
  through a value that is neither a config nor a dict.
  """
  if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
    raise ValueError(f"apply_overrides takes a dataclass config instance, got {type(cfg).__name__}.")
  for assignment in assignments:
    path, value = parse_assignment(assignment)
    keys = path.split(".")
    if not all(keys):
      raise ValueError(f"Override {assignment!r}: the path {path!r} has an empty part; write a.b.c=VALUE.")
    cfg = _set(_Override(assignment), cfg, keys, value, hint=type(cfg), schema=None, where="")
  return cfg


# --- JSON form, differences and the resume rule ---


def config_to_dict(cfg: Any) -> dict[str, Any]:
  """The config as JSON data (nested dataclasses and dicts as dicts, tuples as lists)."""
  return json.loads(config_to_json(cfg))


def config_to_json(cfg: Any) -> str:
  """A stable serialisation: `dataclasses.asdict`, keys sorted, indented (the file `check_resume` writes)."""
  try:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)
  except TypeError as e:
    raise ValueError(f"{type(cfg).__name__} does not serialise to JSON ({e}); its fields must hold numbers, "
                     "strings, booleans, None, tuples, dicts or dataclasses of them.") from None


def differences(old: Any, new: Any, *, prefix: str = "") -> list[tuple[str, Any, Any]]:
  """`(dotted path, old value, new value)` of every leaf that differs between two JSON-like trees (dicts are
  walked key by key, a key missing on one side is `ABSENT`; lists and scalars compare whole)."""
  if isinstance(old, Mapping) and isinstance(new, Mapping):
    out = []
    for key in sorted(set(old) | set(new)):
      out += differences(old.get(key, ABSENT), new.get(key, ABSENT), prefix=f"{prefix}.{key}" if prefix else key)
    return out
  return [] if old == new else [(prefix, old, new)]


def format_differences(changes: Iterable[tuple[str, Any, Any]]) -> str:
  """One `path: old → new` per line (values as JSON)."""
  def show(v):
    return repr(v) if v is ABSENT else json.dumps(v, default=str)

  return "\n".join(f"  {path}: {show(old)} → {show(new)}" for path, old, new in changes)


def is_run_only(path: str, run_only: Iterable[str]) -> bool:
  """Whether a differing dotted `path` lies in one of `run_only`'s paths (itself or below it)."""
  return any(path == r or path.startswith(r + ".") for r in run_only)


def _with_defaults(cls: type, saved: Any) -> Any:
  """A saved config's JSON with the fields it lacks (added to `cls` after it was written) at their defaults,
  as loading it into `cls` would fill them."""
  if not isinstance(saved, Mapping) or not dataclasses.is_dataclass(cls):
    return saved
  hints = _hints(cls)
  out = dict(saved)
  for f in dataclasses.fields(cls):
    if f.name in out:
      if dataclasses.is_dataclass(hints.get(f.name)):
        out[f.name] = _with_defaults(hints[f.name], out[f.name])
    elif f.default is not dataclasses.MISSING:
      out[f.name] = json.loads(json.dumps(f.default))
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = json.loads(json.dumps(f.default_factory()))
  return out


def check_resume(workdir: io.PathLike, cfg: Any, *, filename: str = STUDY_CONFIG_FILE,
                 run_only: Iterable[str] | None = None) -> io.epath.Path:
  """Records `cfg` in `workdir/filename`, or refuses to resume a run made under a config with other results.

  First run (no file): process 0 writes `config_to_json(cfg)`. Later runs: the saved config (fields added to
  the class since it was written read as their defaults) is compared with `cfg` leaf by leaf; a differing
  path that is not in `run_only` (default: `type(cfg).RUN_ONLY_FIELDS`, dotted paths whose values do not
  change the results) raises ValueError listing every such path old → new. Otherwise the file is rewritten
  if anything (a run-only field) changed. Every process must call it (the existence check is process 0's).
  Returns the file's path.
  """
  workdir = io.path(workdir)
  target = workdir / filename
  run_only = tuple(getattr(type(cfg), "RUN_ONLY_FIELDS", ()) if run_only is None else run_only)
  text = config_to_json(cfg) + "\n"
  if io.agreed_exists(target):
    saved_text = target.read_text()
    saved = _with_defaults(type(cfg), json.loads(saved_text))
    changed = [d for d in differences(saved, config_to_dict(cfg)) if not is_run_only(d[0], run_only)]
    if changed:
      raise ValueError(
          f"{workdir} holds a run with a different config (fields {[d[0] for d in changed]} differ; saved → "
          f"now):\n{format_differences(changed)}\nThese change the results: use a new work directory (--workdir) "
          f"for this config, or resume with the config recorded in {target} (the same --config and --set "
          f"overrides); delete {workdir} to start over."
      )
    if saved_text == text:
      return target
  return io.write_text(target, text)
