"""A multi-host rehearsal on one machine: 2 JAX processes × 4 CPU devices against 1 process × 8 devices.

A TPU VM slice runs one JAX process per host, every process running the same program, joined by
`jax.distributed.initialize()`. This module starts that situation locally: `num_processes` Python processes,
each with `local_devices` simulated CPU devices and gloo CPU collectives, joined through a coordinator on
`localhost:PORT`. The rehearsal scenario (`scenario`) then does, in every process, what a study does:

  1. train a small ResNet (depth 8) on scikit-learn digits for a few steps, stopping after a checkpoint as if
     preempted, and resume from that checkpoint to the end (Orbax, multi-host);
  2. reload the trained model and its initialisation and extract all-layer within- and cross-model CKA,
     a streamed PCA, a random sample of activations and every prediction (`extract.compare_models` on a mesh
     over all devices of all processes, the last batch padded and masked);
  3. run `rsim cka RUN --sharded` (trained model) and `rsim cka X.npz --sharded --index procrustes` (stored
     activations; the Procrustes pairs split over every device of every process);
  4. record every file each process opened for writing (a Python audit hook), so that a test can check that
     only process 0 writes results.

`rehearse(workdir)` runs the scenario with 2 × 4 devices and with 1 × 8 devices and compares the parameters,
CKA matrices, predictions and written files (`compare`); `rsim rehearse` and `make rehearse` call it.
`run_processes(argv, ...)` runs any `rsim` command line in N local processes (e.g. a study's local variant),
for tests of multi-host correctness beyond this scenario.

    python -m rsim_jax.rehearse --process-id 0 --num-processes 2 --port 12345 --workdir /tmp/r  # one worker
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

REPORT_FILE = "rehearsal.json"
PARAMS_FILE = "params.npz"
AUDIT_DIR = "audit"

# The scenario's run: small enough for a 2-core CPU, large enough to exercise every multi-host path (the
# 360-example test split leaves a padded, masked last batch; 6 steps with a checkpoint at 3 and a resume).
TRAIN_STEPS = 4
STOP_AFTER = 2
CKA_BATCH_PER_DEVICE = 16


def free_port() -> int:
  """A TCP port that was free a moment ago (bind port 0; the OS picks), for the coordinator."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _setup_jax(process_id: int, num_processes: int, port: int, local_devices: int) -> None:
  """CPU devices and gloo collectives (both before JAX's first use), then join the other processes."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # noqa: PLC0415

  jax.config.update("jax_num_cpu_devices", local_devices)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id, initialization_timeout=120)


class _WriteAudit:
  """Paths under `root` that this process opens for writing or renames onto (Python's audit hooks: every
  `open` and `os.rename`/`os.replace`), excluding Orbax's checkpoint directories, where every process writes
  its own shards by design (and which tensorstore writes from C++, outside Python's `open` anyway)."""

  def __init__(self, root: str):
    self.root = os.path.realpath(root)
    self.paths: set[str] = set()
    self.active = True
    sys.addaudithook(self._hook)

  def _hook(self, event, args):
    if not self.active:
      return
    if event == "open":
      path, mode, flags = args
      if isinstance(mode, str):  # builtins.open
        writes = any(c in mode for c in "wax+")
      else:  # os.open
        writes = isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
      if writes:
        self._add(path)
    elif event in ("os.rename", "os.replace"):
      self._add(args[1])

  def _add(self, path):
    if isinstance(path, int):
      return
    try:
      full = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
      return
    if full.startswith(self.root + os.sep) and f"{os.sep}checkpoints{os.sep}" not in full:
      rel = os.path.relpath(full, self.root)
      if ".tmp" not in os.path.basename(rel):
        self.paths.add(rel)


def _params_arrays(model) -> dict:
  """The model's parameters as flat `name → NumPy array` (host copies, the same on every process)."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = jax.tree_util.tree_flatten_with_path(pure)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(jax.device_get(v)) for path, v in flat}


def scenario(workdir: str) -> dict:
  """The rehearsal's work in this process (see the module docstring); returns what process 0 wrote to
  `workdir/rehearsal.json`."""
  import io as _io  # noqa: PLC0415

  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from rsim_jax import cli, extract, io  # noqa: PLC0415
  from rsim_jax.train import TrainConfig, load_initial_model, load_model, read_metrics, train  # noqa: PLC0415

  run_dir = os.path.join(workdir, "model")
  config = TrainConfig(
      model="resnet", model_kwargs={"depth": 8}, data="digits", data_kwargs={"image_size": 8}, batch_size=64,
      eval_batch_size=64, num_steps=TRAIN_STEPS, checkpoint_every_steps=STOP_AFTER, eval_every_steps=STOP_AFTER,
      log_every_steps=1, lr=0.05, seed=0, progress=False,
  )
  began = time.perf_counter()
  interrupted = train(config, run_dir, stop_after_step=STOP_AFTER)
  assert interrupted.get("interrupted"), interrupted
  final = train(config, run_dir)  # resumes from the checkpoint at STOP_AFTER
  trained_s = time.perf_counter() - began

  model, loaded = load_model(run_dir)
  initial = load_initial_model(run_dir)
  batches, total = extract.split_batches(loaded, batch_size=CKA_BATCH_PER_DEVICE)
  comparison = extract.compare_models([model, initial], batches, total=total, pca_layers=("logits",),
                                      sample_size=50, progress=False)
  extracted_s = time.perf_counter() - began - trained_s

  params = _params_arrays(model)
  buffer = _io.BytesIO()
  np.savez(buffer, **params)
  io.write_bytes(os.path.join(workdir, PARAMS_FILE), buffer.getvalue())

  # The command line, both inputs: a trained model's split, and stored activations (the same file on every
  # process, as on a bucket).
  cli.main(["cka", run_dir, "--sharded", "--batch-size", str(CKA_BATCH_PER_DEVICE), "--out",
            os.path.join(workdir, "cli_model")])
  npz = os.path.join(workdir, "activations.npz")
  acts = {name: values for name, values in comparison.samples[0].items()}
  buffer = _io.BytesIO()
  np.savez(buffer, **acts)
  io.write_bytes(npz, buffer.getvalue())
  io.barrier("activations written")
  # With an index whose pair loops split over the devices of every host (`kernels._pairs`).
  cli.main(["cka", npz, "--sharded", "--batch-size", "5", "--index", "procrustes", "--out",
            os.path.join(workdir, "cli_npz")])

  report = {
      "process_count": jax.process_count(),
      "device_count": jax.device_count(),
      "final": final,
      "metrics": read_metrics(run_dir),
      "within_trained": comparison.within[0].matrix.tolist(),
      "within_initial": comparison.within[1].matrix.tolist(),
      "cross": comparison.cross.matrix.tolist(),
      "layer_names": list(comparison.within[0].x_names),
      "num_examples": comparison.within[0].num_examples,
      "num_batches": comparison.within[0].num_batches,
      "predictions": comparison.predictions[0].tolist(),
      "labels": comparison.labels.tolist(),
      "pca_logits_eigenvalues": np.asarray(comparison.pca[0]["logits"].eigenvalues).tolist(),
      "sample_positions": comparison.sample_positions.tolist(),
      "sample_stem": comparison.samples[0][comparison.within[0].x_names[0]].tolist(),
      "train_seconds": trained_s,
      "extract_seconds": extracted_s,
  }
  io.write_json(os.path.join(workdir, REPORT_FILE), report)
  io.barrier("rehearsal written")
  return report


def worker_main(argv: Sequence[str] | None = None) -> int:
  """One process of a rehearsal: `python -m rsim_jax.rehearse --process-id I --num-processes N --port P
  --workdir DIR [--local-devices 4] [-- rsim ARGS...]` (the scenario, or an `rsim` command line)."""
  parser = argparse.ArgumentParser(prog="python -m rsim_jax.rehearse", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--process-id", type=int, required=True)
  parser.add_argument("--num-processes", type=int, required=True)
  parser.add_argument("--port", type=int, default=0, help="coordinator port on localhost (needed if N > 1)")
  parser.add_argument("--local-devices", type=int, default=4, help="simulated CPU devices of this process")
  parser.add_argument("--workdir", required=True, help="the shared work directory")
  parser.add_argument("rsim_args", nargs=argparse.REMAINDER,
                      help="after `--`: an rsim command line to run instead of the scenario")
  args = parser.parse_args(argv)
  if args.num_processes > 1 and not args.port:
    parser.error("--port is required with more than one process")
  _setup_jax(args.process_id, args.num_processes, args.port, args.local_devices)
  audit = _WriteAudit(args.workdir)
  rsim_args = [a for a in args.rsim_args if a != "--"] if args.rsim_args else []
  if rsim_args:
    from rsim_jax import cli  # noqa: PLC0415

    code = cli.main(rsim_args)
  else:
    scenario(args.workdir)
    code = 0
  audit.active = False
  from rsim_jax import io  # noqa: PLC0415

  io.write_json(os.path.join(args.workdir, AUDIT_DIR, f"process{args.process_id}.json"), sorted(audit.paths),
                all_processes=True)
  import jax  # noqa: PLC0415

  if args.num_processes > 1:
    jax.distributed.shutdown()
  return code


def run_processes(
    workdir: str,
    *,
    rsim_args: Sequence[str] = (),
    num_processes: int = 2,
    local_devices: int = 4,
    timeout: float = 600.0,
    env: dict | None = None,
) -> dict:
  """Runs the scenario (or `rsim rsim_args...`) in `num_processes` local JAX processes × `local_devices` CPU
  devices sharing `workdir`, as the hosts of a slice would; waits for all of them.

  Returns:
    {"seconds": wall time, "writes": per process the sorted files (relative to `workdir`, outside
    checkpoints/) it opened for writing}.

  Raises:
    RuntimeError naming the process, its exit status and the end of its output, if any process fails or the
    `timeout` (seconds) passes (the others are then stopped).
  """
  if num_processes < 1 or local_devices < 1:
    raise ValueError(f"`num_processes` ({num_processes}) and `local_devices` ({local_devices}) must be >= 1.")
  os.makedirs(workdir, exist_ok=True)
  port = free_port() if num_processes > 1 else 0
  child_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  child_env.pop("XLA_FLAGS", None)  # a parent's --xla_force_host_platform_device_count would fight ours
  logs, procs = [], []
  began = time.perf_counter()
  for i in range(num_processes):
    log = open(os.path.join(workdir, f"process{i}.log"), "w")  # noqa: SIM115
    cmd = [sys.executable, "-m", "rsim_jax.rehearse", "--process-id", str(i), "--num-processes",
           str(num_processes), "--port", str(port), "--local-devices", str(local_devices), "--workdir", workdir]
    if rsim_args:
      cmd += ["--", *rsim_args]
    procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env))
    logs.append(log)
  failed = None
  try:
    deadline = began + timeout
    for i, proc in enumerate(procs):
      try:
        code = proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
      except subprocess.TimeoutExpired:
        failed = (i, f"timed out after {timeout:.0f} s")
        break
      if code != 0:
        failed = (i, f"exit status {code}")
        break
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    for log in logs:
      log.close()
  seconds = time.perf_counter() - began
  if failed is not None:
    i, why = failed
    with open(os.path.join(workdir, f"process{i}.log")) as f:
      tail = f.read()[-4000:]
    raise RuntimeError(f"Rehearsal process {i} of {num_processes} failed ({why}); its output ends:\n{tail}")
  writes = []
  for i in range(num_processes):
    with open(os.path.join(workdir, AUDIT_DIR, f"process{i}.json")) as f:
      writes.append([p for p in json.load(f) if not p.startswith(AUDIT_DIR + os.sep)])
  return {"seconds": seconds, "writes": writes}


def _relative_error(a, b) -> float:
  import numpy as np  # noqa: PLC0415

  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def compare(multi_dir: str, single_dir: str) -> dict:
  """Agreement of a multi-process scenario run with the single-process reference: max relative differences
  (max |a − b| / max |b|) of every parameter tensor, the CKA matrices, the PCA eigenvalues and the sampled
  activations, whether predictions and metrics agree, and the files each run left (outside checkpoints/)."""
  import numpy as np  # noqa: PLC0415

  def load(d):
    with open(os.path.join(d, REPORT_FILE)) as f:
      report = json.load(f)
    with np.load(os.path.join(d, PARAMS_FILE)) as z:
      params = {k: z[k] for k in z.files}
    return report, params

  (multi, multi_params), (single, single_params) = load(multi_dir), load(single_dir)
  if sorted(multi_params) != sorted(single_params):
    raise ValueError("The two runs hold different parameter names.")
  names = sorted(single_params)
  flat = lambda params: np.concatenate([np.ravel(params[k]).astype(np.float64) for k in names])  # noqa: E731
  out = {
      # ‖θ − θ_ref‖ / ‖θ_ref‖ over all parameters; per tensor, near-zero tensors (BatchNorm biases after a few
      # steps) would turn float32 rounding of a cancelling gradient sum into a large "relative" error.
      "params": float(np.linalg.norm(flat(multi_params) - flat(single_params)) / np.linalg.norm(flat(single_params))),
      "params_max_abs": max(float(np.max(np.abs(multi_params[k] - single_params[k]))) for k in names),
      "cka_within_trained": _relative_error(multi["within_trained"], single["within_trained"]),
      "cka_within_initial": _relative_error(multi["within_initial"], single["within_initial"]),
      "cka_cross": _relative_error(multi["cross"], single["cross"]),
      "pca_eigenvalues": _relative_error(multi["pca_logits_eigenvalues"], single["pca_logits_eigenvalues"]),
      "sample": _relative_error(multi["sample_stem"], single["sample_stem"]),
      "predictions_equal": multi["predictions"] == single["predictions"] and multi["labels"] == single["labels"],
      "sample_positions_equal": multi["sample_positions"] == single["sample_positions"],
      "num_examples": (multi["num_examples"], single["num_examples"]),
      "num_batches": (multi["num_batches"], single["num_batches"]),
  }
  for name in ("cli_model", "cli_npz"):
    with open(os.path.join(multi_dir, name, "cka.json")) as f:
      a = json.load(f)
    with open(os.path.join(single_dir, name, "cka.json")) as f:
      b = json.load(f)
    out[f"{name}_cka"] = _relative_error(a["cka"], b["cka"])
  with open(os.path.join(multi_dir, "cli_npz", "procrustes.json")) as f:
    a = json.load(f)
  with open(os.path.join(single_dir, "cli_npz", "procrustes.json")) as f:
    b = json.load(f)
  out["cli_npz_procrustes"] = _relative_error(a["matrix"], b["matrix"])
  metric_keys = ("loss", "accuracy")
  out["metrics"] = max(
      (_relative_error(m[k], s[k]) for m, s in zip(multi["metrics"], single["metrics"]) for k in metric_keys
       if k in m and m[k] is not None),
      default=0.0,
  )
  out["metrics_records"] = (len(multi["metrics"]), len(single["metrics"]))
  return out


def _files(root: str) -> list[str]:
  found = []
  for dirpath, _, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    if rel.split(os.sep)[0] in (AUDIT_DIR,) or f"{os.sep}checkpoints" in os.sep + rel:
      continue
    found += [os.path.normpath(os.path.join(rel, f)) for f in filenames if not f.endswith(".log")]
  return sorted(found)


def rehearse(workdir: str, *, num_processes: int = 2, local_devices: int = 4, timeout: float = 900.0) -> dict:
  """The whole rehearsal: the scenario in `num_processes × local_devices` and in `1 × (num_processes ·
  local_devices)` devices (under `workdir/multi` and `workdir/single`), then `compare`.

  Returns `compare`'s dict plus "seconds" (wall time of each run), "writes" (files each process of the
  multi-process run opened for writing) and "files" (files each run left, outside checkpoints/).
  """
  import shutil  # noqa: PLC0415

  multi_dir, single_dir = os.path.join(workdir, "multi"), os.path.join(workdir, "single")
  for d in (multi_dir, single_dir):  # a fresh start: a finished run would otherwise just be resumed
    shutil.rmtree(d, ignore_errors=True)
  multi = run_processes(multi_dir, num_processes=num_processes, local_devices=local_devices, timeout=timeout)
  single = run_processes(single_dir, num_processes=1, local_devices=num_processes * local_devices,
                         timeout=timeout)
  result = compare(multi_dir, single_dir)
  result["seconds"] = {"multi": multi["seconds"], "single": single["seconds"]}
  result["writes"] = multi["writes"]
  result["files"] = {"multi": _files(multi_dir), "single": _files(single_dir)}
  return result


def main(argv: Sequence[str] | None = None) -> int:
  """`rsim rehearse [--workdir DIR]`: the rehearsal, its agreement printed as JSON; exit status 1 if the
  multi-process run disagrees with the reference by more than 1e-5 (relative) or a non-zero process wrote
  files."""
  parser = argparse.ArgumentParser(prog="rsim rehearse", description=rehearse.__doc__)
  parser.add_argument("--workdir", default=None, help="where to run (default: a new temporary directory)")
  parser.add_argument("--num-processes", type=int, default=2)
  parser.add_argument("--local-devices", type=int, default=4)
  parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
  args = parser.parse_args(argv)
  import tempfile  # noqa: PLC0415

  workdir = args.workdir or tempfile.mkdtemp(prefix="rsim_rehearse_")
  result = rehearse(workdir, num_processes=args.num_processes, local_devices=args.local_devices,
                    timeout=args.timeout)
  print(json.dumps(result, indent=1, default=str))
  problems = check(result)
  for problem in problems:
    print(f"rehearsal FAILED: {problem}")
  if not problems:
    print(f"rehearsal passed in {workdir}: {args.num_processes} processes × {args.local_devices} devices agree "
          f"with 1 × {args.num_processes * args.local_devices} (max relative difference "
          f"{max(v for k, v in result.items() if isinstance(v, float)):.1e}).")
  return 1 if problems else 0


TOLERANCE = 1e-5


def check(result: dict, *, tolerance: float = TOLERANCE) -> list[str]:
  """What is wrong with a `rehearse` result (empty when the multi-process run agrees with the reference)."""
  problems = [f"{k}: relative difference {v:.2e} > {tolerance:g}" for k, v in result.items()
              if isinstance(v, float) and v > tolerance]
  for key in ("predictions_equal", "sample_positions_equal"):
    if not result[key]:
      problems.append(f"{key} is False")
  for key in ("num_examples", "num_batches", "metrics_records"):
    if result[key][0] != result[key][1]:
      problems.append(f"{key} differ: {result[key]}")
  if any(result["writes"][1:]):
    problems.append(f"processes other than 0 wrote files: {result['writes'][1:]}")
  if result["files"]["multi"] != result["files"]["single"]:
    problems.append(f"the runs left different files: {result['files']}")
  return problems


if __name__ == "__main__":
  sys.exit(worker_main())
