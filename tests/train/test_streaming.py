"""`train` on streaming sources (`rsim_jax.data.open_source`: tfds read record by record through grain), offline.

ImageNet is `tfds:imagenet2012` under `tfds.testing.mock_data` (deterministic random records of varying size,
nothing downloads); subsets, whose labels the mock cannot give without TensorFlow, run on a tiny variable-size
builder prepared here as real ArrayRecord files (tests/data/test_tfds.py).
"""

import json

import jax
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from rsim_jax import data  # noqa: E402
from rsim_jax.train import TrainConfig, load_config, load_model, loop, read_metrics, train  # noqa: E402
from rsim_jax.train import __main__ as train_main  # noqa: E402
from tests.data.test_tfds import RsimTinyVariable  # noqa: E402

IMAGENET = dict(model="resnet", model_kwargs={"depth": 8}, data="tfds:imagenet2012", eval_split="validation",
                data_kwargs={"image_size": 32}, batch_size=16, eval_batch_size=16, augment=True, lr=0.05,
                log_every_steps=1, progress=False)


def mock(n):
  return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.AUTO)


def _params(workdir):
  model, _ = load_model(workdir)
  from flax import nnx

  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


def _strip(records):
  return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in records]


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
  """6 steps (2 epochs of 48 mocked images) on streamed ImageNet at 32×32, checkpoints every 2 steps."""
  config = TrainConfig(**IMAGENET, num_epochs=2, checkpoint_every_steps=2, eval_every_steps=0)
  workdir = tmp_path_factory.mktemp("imagenet")
  with mock(48):
    final = train(config, workdir)
  return config, workdir, final


def test_streamed_imagenet_trains_without_loading_the_split(imagenet_run):
  config, workdir, final = imagenet_run
  info = json.loads((workdir / "run_info.json").read_text())
  assert info["image_shape"] == [32, 32, 3] and info["num_classes"] == 1000
  assert info["num_train"] == 48 and info["steps_per_epoch"] == 3 and final["step"] == 6
  assert np.isfinite(final["test_loss"]) and np.isfinite(final["train_loss"])
  test = read_metrics(workdir, "validation")
  assert [r["count"] for r in test] == [48]  # every validation image once (3 full batches)
  with mock(48):
    with pytest.raises(ValueError, match="varying size.*open_source"):  # what `stream=False` would do
      train(config.replace(stream=False), workdir / "in_memory")


def test_streamed_resume_equals_uninterrupted(imagenet_run, tmp_path):
  config, full_dir, final = imagenet_run
  with mock(48):
    assert train(config, tmp_path, stop_after_step=3) == {"step": 3, "interrupted": True}  # checkpoint at 2
    resumed = train(config, tmp_path)
  assert resumed["step"] == 6
  for a, b in zip(_params(full_dir), _params(tmp_path)):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(resumed["test_loss"], final["test_loss"], rtol=1e-6)
  assert _strip(read_metrics(tmp_path)) == _strip(read_metrics(full_dir))


def test_streaming_and_in_memory_runs_agree():
  """A fixed-size tfds set (CIFAR-10, mocked) streamed through grain trains exactly as loaded into memory."""
  config = TrainConfig(model="mlp", model_kwargs={"hidden": (16,)}, data="tfds:cifar10", batch_size=16,
                       eval_batch_size=16, num_steps=3, augment=True, lr=0.05, progress=False)
  finals, params = [], []
  import tempfile

  for stream in (True, False):
    with tempfile.TemporaryDirectory() as workdir, mock(40):
      finals.append(train(config.replace(stream=stream), workdir))
      params.append(_params(workdir))
  for a, b in zip(*params):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert finals[0]["test_loss"] == pytest.approx(finals[1]["test_loss"], rel=1e-6)


def test_streamed_subset_reads_labels_once_and_resumes(tmp_path):
  """`train_subset` on a streaming source: class-balanced from the labels alone, the choice kept in the work
  directory (a resumed run does not read the labels again), resume == uninterrupted."""
  root = tmp_path / "tfds"
  RsimTinyVariable(data_dir=str(root), file_format="array_record").download_and_prepare()
  config = TrainConfig(model="mlp", model_kwargs={"hidden": (16,)}, data="tfds:rsim_tiny_variable",
                       data_kwargs={"image_size": 16, "data_dir": str(root)}, train_subset=12, batch_size=8,
                       eval_batch_size=8, num_steps=4, checkpoint_every_steps=2, augment=True, lr=0.05,
                       progress=False)
  src = data.open_source("tfds:rsim_tiny_variable", "train", image_size=16, data_dir=str(root))
  expected = data.subset_indices(src.labels, 3, count=12, seed=0)
  train(config, tmp_path / "full")
  np.testing.assert_array_equal(np.load(tmp_path / "full" / loop.SUBSET_FILE), expected)
  assert np.bincount(src.labels[expected]).tolist() == [4, 4, 4]
  assert json.loads((tmp_path / "full" / "run_info.json").read_text())["num_train"] == 12
  train(config, tmp_path / "cut", stop_after_step=3)

  class NoLabels(Exception):
    pass

  def refuse(self):
    raise NoLabels

  with pytest.MonkeyPatch.context() as mp:  # the resumed run takes its subset from the work directory
    mp.setattr(data.TfdsSource, "labels", property(refuse))
    resumed = train(config, tmp_path / "cut")
    with pytest.raises(NoLabels):
      train(config, tmp_path / "fresh")
  assert resumed["step"] == 4
  for a, b in zip(_params(tmp_path / "full"), _params(tmp_path / "cut")):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_subset_of_a_source_without_labels_is_refused():
  class Stream:
    num_classes = 3

    def __len__(self):
      return 30

    def __getitem__(self, i):
      return {"image": np.zeros((4, 4, 3), np.uint8), "label": np.int32(i % 3)}

  with pytest.raises(ValueError, match="train_subset=9 needs the labels.*train_subset=None"):
    loop._subset(Stream(), 9, 0)


def test_imagenet_configs():
  r50 = load_config("experiments/train_configs/imagenet_resnet.py:resnet50")
  assert r50.model == "imagenet_resnet" and r50.model_kwargs["blocks_per_stage"] == (3, 4, 6, 3)
  assert (r50.batch_size, r50.lr, r50.warmup_epochs, r50.num_epochs) == (1024, 0.4, 5, 90)
  assert (r50.momentum, r50.weight_decay, r50.label_smoothing, r50.schedule) == (0.9, 1e-4, 0.1, "cosine")
  assert r50.dtype == "bfloat16" and r50.augment and r50.data == "tfds:imagenet2012"
  assert r50.steps_per_epoch(1_281_167) == 1251 and r50.total_steps(1_281_167) == 90 * 1251
  local = load_config("experiments/train_configs/imagenet_resnet.py:local")
  assert local.data == r50.data and local.model == r50.model and local.lr == pytest.approx(0.1 * 16 / 256)
  with pytest.raises(ValueError, match="choose local or resnet50"):
    load_config("experiments/train_configs/imagenet_resnet.py:resnet51")


def test_local_imagenet_config_one_step_from_the_command_line(tmp_path, capsys):
  with mock(32):
    assert train_main.main(["--config", "experiments/train_configs/imagenet_resnet.py:local", "--workdir",
                            str(tmp_path), "--set", "num_steps=1", "--set", "progress=false",
                            "--set", "num_devices=1"]) == 0  # one device: half the time of 8 simulated ones
  final = json.loads(capsys.readouterr().out)
  info = json.loads((tmp_path / "run_info.json").read_text())
  assert final["step"] == 1 and np.isfinite(final["test_loss"]) and np.isfinite(final["train_loss"])
  assert info["image_shape"] == [32, 32, 3] and info["num_classes"] == 1000 and info["num_train"] == 32
