"""Multi-host correctness, rehearsed on one machine: 2 JAX processes × 4 CPU devices (gloo collectives, joined
through `jax.distributed.initialize` on localhost) against 1 process × 8 devices, plus the pieces that make it
work (process shares of evaluation splits, one writer, epath work directories)."""

import json
import os

import jax
import numpy as np
import pytest

from rsim_jax import io, rehearse
from rsim_jax.data import ArrayDataset, eval_batches, train_batches


def test_two_processes_train_resume_and_extract_like_one(tmp_path):
  # ~2 min on a 2-core CPU: the scenario (train 4 steps with a checkpoint at 2, stop, resume; all-layer CKA of
  # the trained and the initial ResNet-8; `rsim cka --sharded` on the run and on an .npz) in 2 processes
  # × 4 devices, then in 1 × 8.
  result = rehearse.rehearse(str(tmp_path), timeout=600)
  multi = json.loads((tmp_path / "multi" / rehearse.REPORT_FILE).read_text())
  single = json.loads((tmp_path / "single" / rehearse.REPORT_FILE).read_text())
  assert (multi["process_count"], multi["device_count"]) == (2, 8)
  assert (single["process_count"], single["device_count"]) == (1, 8)
  # The same numbers, ≤ 1e-5 relative (measured: ~2e-8 for the parameters, ~3e-7 for CKA).
  for key in ("params", "cka_within_trained", "cka_within_initial", "cka_cross", "pca_eigenvalues", "sample",
              "cli_model_cka", "cli_npz_cka", "cli_npz_procrustes", "metrics"):
    assert result[key] <= 1e-5, (key, result[key])
  assert result["predictions_equal"] and result["sample_positions_equal"]
  # Every example of the 360-image split once: 23 batches of 16 per device (8 × 16 = 128 per global batch, the
  # last one padded and masked), never dropped or counted twice.
  assert multi["num_examples"] == 360 and len(multi["predictions"]) == 360 and multi["num_batches"] == 23
  np.testing.assert_array_equal(sorted(multi["sample_positions"]), multi["sample_positions"])
  # The run was interrupted after its step-2 checkpoint and resumed to step 4 (metrics read as one run).
  assert multi["final"]["step"] == rehearse.TRAIN_STEPS
  steps = [r["step"] for r in multi["metrics"] if r["split"] == "train"]
  assert steps == list(range(1, rehearse.TRAIN_STEPS + 1))
  # Exactly one process wrote each file; both runs left the same files.
  assert result["writes"][1] == []
  expected = {"model/config.json", "model/run_info.json", "model/metrics.jsonl", "model/final_metrics.json",
              "params.npz", "rehearsal.json", "cli_model/cka.json", "cli_model/cka.png", "cli_npz/cka.json",
              "cli_npz/cka.png", "cli_npz/procrustes.json", "cli_npz/procrustes.png", "activations.npz"}
  assert set(result["writes"][0]) == expected
  assert set(result["files"]["multi"]) == set(result["files"]["single"]) == expected
  assert rehearse.check(result) == []


def test_check_flags_disagreement_and_stray_writes():
  good = {"params": 1e-8, "cka_cross": 2e-7, "predictions_equal": True, "sample_positions_equal": True,
          "num_examples": (360, 360), "num_batches": (23, 23), "metrics_records": (6, 6), "writes": [["a"], []],
          "files": {"multi": ["a"], "single": ["a"]}}
  assert rehearse.check(good) == []
  bad = {**good, "cka_cross": 3e-4, "writes": [["a"], ["a"]], "predictions_equal": False}
  problems = rehearse.check(bad)
  assert len(problems) == 3 and "cka_cross" in problems[0]


def test_worker_failure_is_reported_with_its_output(tmp_path):
  with pytest.raises(RuntimeError, match=r"(?s)process 0 of 1 failed.*invalid choice"):
    rehearse.run_processes(str(tmp_path), rsim_args=["no-such-command"], num_processes=1, local_devices=1,
                           timeout=120)


def _ds(n):
  images = np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2, 1)
  return ArrayDataset(images, np.arange(n, dtype=np.int32) % 3, 3, ("a", "b", "c"), "toy", (0.0,), (1.0,))


@pytest.mark.parametrize("num_processes", [2, 4])
def test_eval_split_that_does_not_divide_is_padded_and_masked_across_processes(num_processes):
  # 37 examples, global batch 8: every example lands in exactly one process's rows, in order; the padding of
  # the last batch is masked on whichever processes hold it.
  n, batch = 37, 8
  ds = _ds(n)
  shares = [list(eval_batches(ds, batch_size=batch, process_index=p, process_count=num_processes))
            for p in range(num_processes)]
  assert len({len(s) for s in shares}) == 1 and len(shares[0]) == -(-n // batch)  # same number of batches
  seen = []
  for t in range(len(shares[0])):
    rows = [shares[p][t] for p in range(num_processes)]
    assert {len(r["mask"]) for r in rows} == {batch // num_processes}
    labels = np.concatenate([r["label"] for r in rows])
    mask = np.concatenate([r["mask"] for r in rows])
    images = np.concatenate([r["image"] for r in rows])
    seen += list(images[mask][:, 0, 0, 0])
    assert np.all(labels[~mask] == 0) and np.all(images[~mask] == 0)
  np.testing.assert_allclose(np.array(seen) * 255, ds.images[:, 0, 0, 0], atol=1e-3)  # mean 0, std 1: x / 255


def test_train_batches_of_processes_make_the_global_batch():
  ds = _ds(64)
  whole = next(iter(train_batches(ds, batch_size=16, seed=3, process_count=1, process_index=0)))
  parts = [next(iter(train_batches(ds, batch_size=16, seed=3, process_count=2, process_index=p))) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole["label"])
  np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
  with pytest.raises(ValueError, match=r"`batch_size`=15 does not divide over the 2 processes"):
    next(iter(train_batches(ds, batch_size=15, seed=3, process_count=2, process_index=0)))


def test_only_process_zero_writes(tmp_path, monkeypatch):
  target = tmp_path / "sub" / "x.json"
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert not io.is_writer()
  io.write_json(target, {"a": 1})
  assert not target.exists()
  io.write_text(tmp_path / "own.txt", "mine", all_processes=True)  # a process-local file
  assert (tmp_path / "own.txt").read_text() == "mine"
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  io.write_json(target, {"a": 1})
  assert io.read_json(target) == {"a": 1} and os.listdir(target.parent) == ["x.json"]  # no temporary left


def test_epath_work_directories_and_npy_round_trip(tmp_path):
  path = io.path(str(tmp_path / "w"))
  assert type(path).__module__.startswith("etils.epath") and not io.is_remote(path)
  assert io.is_remote("gs://bucket/runs/x") and str(io.path("gs://bucket/runs/x") / "a") == "gs://bucket/runs/x/a"
  values = np.arange(12, dtype=np.int64).reshape(3, 4)
  io.save_npy(path / "v.npy", values)
  np.testing.assert_array_equal(io.load_npy(path / "v.npy"), values)
  with pytest.raises(ValueError, match="must be a str or path"):
    io.path(3)


def test_metrics_writer_rewrites_whole_file_on_object_stores(tmp_path, monkeypatch):
  # gs:// has no append; the writer keeps the lines and rewrites the object. Exercised on a local path.
  from rsim_jax.train.metrics import MetricsWriter, read_metrics

  monkeypatch.setattr(io, "is_remote", lambda _: True)
  writer = MetricsWriter(tmp_path)
  for step in (1, 2, 3):
    writer.write(step, "train", {"loss": float(step)})
  writer.truncate_after(2)
  writer.write(3, "train", {"loss": 30.0})
  assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_local_split_batches_give_every_process_the_whole_split():
  from rsim_jax import extract
  from rsim_jax.train import TrainConfig

  config = TrainConfig(model="resnet", model_kwargs={"depth": 8}, data="digits", data_kwargs={"image_size": 8})
  batches, total = extract.split_batches(config, batch_size=100, local=True, max_examples=250)
  batches = list(batches)
  assert total == len(batches) == 3 and batches[0]["image"].shape[0] == 100
  assert sum(int(b["mask"].sum()) for b in batches) == 250
  sharded, sharded_total = extract.split_batches(config, batch_size=10, max_examples=250)  # 8 devices × 10
  assert sharded_total == 4 and next(iter(sharded))["image"].shape[0] == 80
  assert io.agreed_exists(os.devnull) and not io.agreed_exists(os.path.join(os.devnull, "x"))
