"""What every study shares, so that a study module holds only what is particular to its paper.

A study (`rsim_jax.studies.<name>`, run by `rsim study NAME --config V`) is:

- a frozen config dataclass with a `train` dict of `TrainConfig` keyword arguments and `RUN_ONLY_FIELDS`
  (`RUN_ONLY` or `FINAL_MODELS_RUN_ONLY` here; `configs.check_resume` reads it);
- its variants: `variants = Variants("name")`, `get_config = variants.get`, and one function a variant that
  returns its config, decorated `@variants("local")`;
- `plan(cfg)`: what `run` would train, without training (`plan_rows`);
- `run(cfg, workdir)`: `train_all` (resumes), one `cached_json` per analysis stage (reused on a rerun),
  `write_results`, figures (`rsim_jax.plotting`), `write_report` (`table`, `fmt`: from `rsim_jax.analysis.tables`,
  where analysis modules that build report tables find them too).

Multi-host: every process runs the same program; `cached_json` decides "read or compute" by `io.agreed_exists`
(process 0's view, so no process skips a collective the others enter) and only process 0 writes
(`rsim_jax.io`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rsim_jax import extract, io, parallel
from rsim_jax.analysis.tables import fmt, table  # the studies' report API (`rsim_jax.analysis` uses them too)

__all__ = ["RUN_ONLY", "FINAL_MODELS_RUN_ONLY", "Variants", "cached_json", "choices", "eval_batches", "fmt",
           "model_dir", "plan_rows", "report_text", "table", "train_all", "write_report", "write_results"]

# `train` fields no study's results depend on: progress bars, logging, device counts, metric streaming, TensorBoard.
RUN_ONLY = ("train.progress", "train.num_devices", "train.log_every_steps", "train.stream", "train.tensorboard")
# ... and, for a study that analyses only the final models, the evaluation and checkpoint intervals and the
# checkpoints kept.
FINAL_MODELS_RUN_ONLY = RUN_ONLY + ("train.eval_every_steps", "train.checkpoint_every_steps",
                                    "train.keep_checkpoints")


def choices(names: Sequence[str]) -> str:
  """`'a', 'b' or 'c'`: names for an error message."""
  quoted = [repr(n) for n in names]
  return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


class Variants:
  """A study's named configs, in the order they are registered.

      variants = Variants("wide_deep")
      get_config = variants.get  # the study's `get_config(variant="local")`

      @variants("local")
      def _local() -> WideDeepConfig:
        return WideDeepConfig(...)

  `get` of an unregistered name raises `ValueError("Unknown wide_deep variant 'x'; choose 'local', ... or
  'tiny'.")`.
  """

  def __init__(self, study: str, *, default: str = "local"):
    self.study = study
    self.default = default
    self._makers: dict[str, Callable[[], Any]] = {}

  def __call__(self, name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """A decorator registering a function of no arguments that returns the config of variant `name`."""

    def register(make: Callable[[], Any]) -> Callable[[], Any]:
      if name in self._makers:
        raise ValueError(f"{self.study} variant {name!r} is registered twice.")
      self._makers[name] = make
      return make

    return register

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self._makers)

  def get(self, name: str | None = None) -> Any:
    """A new config of variant `name` (None: the default variant): a study's `get_config`."""
    name = self.default if name is None else name
    if name not in self._makers:
      raise ValueError(f"Unknown {self.study} variant {name!r}; choose {choices(self.names)}.")
    return self._makers[name]()


def cached_json(path: io.PathLike, compute: Callable[[], Any], *, version: int | None = None,
                extend: Callable[[Any], bool] | None = None, indent: int | None = None) -> Any:
  """A cached stage of a study: the JSON at `path` if it exists, else `compute()`, written there.

  "Exists" is process 0's view on every process (`io.agreed_exists`): a process that read a cache while the
  others computed would leave them waiting in the computation's collectives. Only process 0 writes.

  Args:
    path: the cache (local or `gs://`).
    compute: makes the value (a JSON-serialisable object); called on every process when the cache is missing.
    version: when given, the value is a dict stored with `"version": version` as its first key, and a cache of
      another (or no) version is stale: recomputed and overwritten. Bump it when `compute` changes what it
      computes.
    extend: called with a value read from the cache; returns True when it added to it (a field added to the
      stage since the cache was written), and the cache is then rewritten. Not called on a computed value.
    indent: of the JSON written.

  Returns:
    The value, read or computed.
  """
  path = io.path(path)
  if io.agreed_exists(path):
    value = io.read_json(path)
    if version is None or (isinstance(value, dict) and value.get("version") == version):
      if extend is not None and extend(value):
        io.write_json(path, value, indent=indent)
      return value
  value = compute()
  if version is not None:
    if not isinstance(value, Mapping):
      raise TypeError(f"A versioned cache holds a dict; {path} got {type(value).__name__}.")
    value = {"version": version, **value}
  io.write_json(path, value, indent=indent)
  return value


def model_dir(workdir: io.PathLike, name: str):
  """Where run `name` of a study trains: `workdir/models/name`."""
  return io.path(workdir) / "models" / name


def train_all(runs: Iterable[tuple[str, Any]], workdir: io.PathLike, *,
              then: Callable[[str, Any, dict], Any] | None = None,
              notes: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Trains every run of a study, each in `model_dir(workdir, name)`, in order.

  Resumes: `rsim_jax.train.train` continues an interrupted run from its last checkpoint and returns a finished
  run's final metrics without training (it refuses a run directory whose config changed the results).

  Args:
    runs: `(name, TrainConfig)` pairs.
    workdir: the study's work directory.
    then: `then(name, run_dir, final_metrics)` right after each run is trained (e.g. its cached analysis), so
      a long study has the first model's numbers before the last model trains.
    notes: printed after a run's name in the progress line ("[2/5] wrn10_1 (early)").

  Returns:
    `{name: then(...)}`, or `{name: final_metrics}` without `then`.
  """
  from rsim_jax.train import train

  runs = list(runs)
  out = {}
  for i, (name, config) in enumerate(runs):
    note = f" ({notes[name]})" if notes and name in notes else ""
    print(f"[{i + 1}/{len(runs)}] {name}{note}", flush=True)
    run_dir = model_dir(workdir, name)
    final = train(config, run_dir)
    out[name] = final if then is None else then(name, run_dir, final)
  return out


def eval_batches(config) -> tuple[Any, int, int]:
  """The evaluation split of a training run (`config`: its TrainConfig) for an extraction without CKA:
  `(batches, num_batches, global_batch_size)`, the run's `eval_batch_size` spread over the data-parallel
  devices (`extract.split_batches` takes a batch per device; without CKA that size only sets memory and
  padding). `num_batches × global_batch_size` ≥ the split's examples."""
  devices = parallel.data_mesh().shape[parallel.DATA_AXIS]
  per_device = -(-config.eval_batch_size // devices)
  batches, total = extract.split_batches(config, batch_size=per_device)
  return batches, total, per_device * devices


def plan_rows(runs: Iterable[tuple[str, Any]], fields: Sequence[str], *,
              extra: Mapping[str, Mapping] | None = None) -> list[dict]:
  """`plan`'s rows (a dry run): per `(name, TrainConfig)`, `{"name": name, **extra[name], field: value, ...}`
  for each of `fields` of the TrainConfig (mappings as plain dicts, so that the row prints as JSON)."""
  rows = []
  for name, config in runs:
    row = {"name": name, **(extra or {}).get(name, {})}
    for field in fields:
      value = getattr(config, field)
      row[field] = dict(value) if isinstance(value, Mapping) else value
    rows.append(row)
  return rows


def write_results(workdir: io.PathLike, results: Any, **dumps_kwargs):
  """`workdir/results.json` (indent 1), written by process 0; `dumps_kwargs` as `json.dumps` (e.g.
  `default=float`)."""
  return io.write_json(io.path(workdir) / "results.json", results, indent=1, **dumps_kwargs)


def report_text(blocks: Iterable[str | Sequence[str] | None], figures: Sequence[io.PathLike] = ()) -> str:
  """Markdown: the blocks (a line, or a list of lines: a paragraph, a table, a list) separated by blank lines,
  None skipped; then "Figures:" and an image link a figure, by file name (figures lie beside report.md)."""
  lines = []
  for block in blocks:
    if block is None:
      continue
    if lines:
      lines.append("")
    lines += [block] if isinstance(block, str) else list(block)
  lines += ["", "Figures:", ""] + [f"- ![{io.path(p).stem}]({io.path(p).name})" for p in figures]
  return "\n".join(lines) + "\n"


def write_report(workdir: io.PathLike, blocks: Iterable[str | Sequence[str] | None],
                 figures: Sequence[io.PathLike] = ()):
  """Writes `report_text(blocks, figures)` to `workdir/report.md` (process 0); returns its path."""
  return io.write_text(io.path(workdir) / "report.md", report_text(blocks, figures))
