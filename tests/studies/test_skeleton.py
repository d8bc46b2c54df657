"""`rsim_jax.studies.skeleton`: the cached stage, the variant registry, the training loop, plan rows, the
report writer and the number formatter every study uses."""

import json
import math

import numpy as np
import pytest

from rsim_jax.studies import skeleton

# --- cached_json ---


def _counting(value):
  calls = []

  def compute():
    calls.append(1)
    return dict(value)

  return compute, calls


def test_cached_json_computes_once_then_reads(tmp_path):
  path = tmp_path / "analysis" / "stage.json"
  compute, calls = _counting({"a": 1, "b": [1.5, 2.5]})
  assert skeleton.cached_json(path, compute) == {"a": 1, "b": [1.5, 2.5]}
  assert len(calls) == 1 and json.loads(path.read_text()) == {"a": 1, "b": [1.5, 2.5]}
  # Read back, not recomputed, not rewritten; what the file holds wins over what compute would give now.
  path.write_text(json.dumps({"a": 2}))
  stamp = path.stat().st_mtime_ns
  assert skeleton.cached_json(path, compute) == {"a": 2}
  assert len(calls) == 1 and path.stat().st_mtime_ns == stamp


def test_cached_json_recomputes_a_cache_of_another_version(tmp_path):
  path = tmp_path / "stage.json"
  compute, calls = _counting({"x": 1})
  value = skeleton.cached_json(path, compute, version=2)
  assert value == {"version": 2, "x": 1} and list(value) == ["version", "x"]  # the version is the first key
  assert json.loads(path.read_text()) == value
  assert skeleton.cached_json(path, compute, version=2) == value and len(calls) == 1
  # A newer version: the cache is stale, recomputed and overwritten.
  assert skeleton.cached_json(path, compute, version=3) == {"version": 3, "x": 1} and len(calls) == 2
  assert json.loads(path.read_text())["version"] == 3
  # A cache written without a version (or not a dict) is stale for a versioned stage.
  path.write_text(json.dumps({"x": 0}))
  assert skeleton.cached_json(path, compute, version=3)["x"] == 1 and len(calls) == 3
  path.write_text(json.dumps([1, 2]))
  assert skeleton.cached_json(path, compute, version=3)["x"] == 1 and len(calls) == 4
  # Without `version`, any cache is read as it is.
  assert skeleton.cached_json(path, compute) == {"version": 3, "x": 1} and len(calls) == 4


def test_cached_json_extend_adds_to_a_read_cache_only(tmp_path):
  path = tmp_path / "stage.json"
  compute, calls = _counting({"x": 1})
  seen = []

  def extend(value):
    seen.append(dict(value))
    if "extra" in value:
      return False
    value["extra"] = 7
    return True

  assert skeleton.cached_json(path, compute, extend=extend) == {"x": 1} and seen == []  # computed: not extended
  assert skeleton.cached_json(path, compute, extend=extend) == {"x": 1, "extra": 7}
  assert json.loads(path.read_text()) == {"x": 1, "extra": 7}  # rewritten with the addition
  stamp = path.stat().st_mtime_ns
  assert skeleton.cached_json(path, compute, extend=extend) == {"x": 1, "extra": 7}
  assert path.stat().st_mtime_ns == stamp and len(calls) == 1 and len(seen) == 2  # nothing added: not rewritten


def test_cached_json_refuses_a_versioned_value_that_is_not_a_dict(tmp_path):
  with pytest.raises(TypeError, match="versioned cache holds a dict"):
    skeleton.cached_json(tmp_path / "stage.json", lambda: [1, 2], version=1)
  assert not (tmp_path / "stage.json").exists()


# --- Variants ---


def test_variants_registry_returns_new_configs_and_names_the_choices():
  variants = skeleton.Variants("demo")

  @variants("local")
  def _local():
    return {"size": 1}

  @variants("paper")
  def _paper():
    return {**variants.get("local"), "size": 100}

  assert variants.names == ("local", "paper")
  assert variants.get("paper") == {"size": 100} and variants.get() == {"size": 1}  # default: "local"
  assert skeleton.Variants("other", default="paper").default == "paper"
  first = variants.get("local")
  first["size"] = 5
  assert variants.get("local") == {"size": 1}  # a new config each time
  with pytest.raises(ValueError, match=r"^Unknown demo variant 'huge'; choose 'local' or 'paper'\.$"):
    variants.get("huge")
  with pytest.raises(ValueError, match="registered twice"):
    variants("local")(_local)

  @variants("tiny")
  def _tiny():
    return {}

  with pytest.raises(ValueError, match=r"choose 'local', 'paper' or 'tiny'\.$"):
    variants.get("Local")
  assert skeleton.choices(["only"]) == "'only'"


def test_each_study_lists_its_variants_in_the_error():
  from rsim_jax.studies import intrinsic_dim, mitosis, wide_deep

  expected = {
      wide_deep: "'local', 'local_ablation', 'local_wide', 'local_long', 'cifar10_local', 'cifar10', 'imagenet' "
                 "or 'tiny'",
      intrinsic_dim: "'local', 'fmnist_local', 'cifar10_local', 'paper' or 'tiny'",
      mitosis: "'local', 'cifar10_local', 'cifar10' or 'tiny'",
  }
  for module, names in expected.items():
    study = module.__name__.rsplit(".", 1)[1]
    with pytest.raises(ValueError) as e:
      module.get_config("huge")
    assert str(e.value) == f"Unknown {study} variant 'huge'; choose {names}."


# --- train_all, plan_rows ---


def test_train_all_trains_in_order_and_hands_each_run_to_then(tmp_path, monkeypatch, capsys):
  import rsim_jax.train

  trained = []

  def fake_train(config, run_dir):
    trained.append((config, str(run_dir)))
    return {"test_accuracy": config / 10}

  monkeypatch.setattr(rsim_jax.train, "train", fake_train)
  out = skeleton.train_all([("a", 1), ("b", 2)], tmp_path, notes={"b": "early"})
  assert out == {"a": {"test_accuracy": 0.1}, "b": {"test_accuracy": 0.2}}
  assert trained == [(1, str(tmp_path / "models" / "a")), (2, str(tmp_path / "models" / "b"))]
  assert capsys.readouterr().out == "[1/2] a\n[2/2] b (early)\n"
  order = []

  def then(name, run_dir, final):
    order.append(("then", name, len(trained)))  # called right after its own run, before the next trains
    return (str(run_dir), final["test_accuracy"])

  out = skeleton.train_all(iter([("a", 1), ("b", 2)]), str(tmp_path), then=then)
  assert out == {"a": (str(tmp_path / "models" / "a"), 0.1), "b": (str(tmp_path / "models" / "b"), 0.2)}
  assert order == [("then", "a", 3), ("then", "b", 4)]


def test_plan_rows():
  class Config:
    model = "resnet"
    model_kwargs = {"depth": 20}
    lr = 0.1

  rows = skeleton.plan_rows([("x", Config())], ("model", "model_kwargs", "lr"), extra={"x": {"kind": "main"}})
  assert rows == [{"name": "x", "kind": "main", "model": "resnet", "model_kwargs": {"depth": 20}, "lr": 0.1}]
  assert list(rows[0]) == ["name", "kind", "model", "model_kwargs", "lr"]
  assert skeleton.plan_rows([("y", Config())], ("lr",)) == [{"name": "y", "lr": 0.1}]


# --- report ---


def test_table_lines():
  lines = skeleton.table(["model", "acc", "note"], [["a", 0.5, "x / y"], ["b", "–", ""]], "lrl")
  assert lines == ["| model | acc | note |", "|---|---:|---|", "| a | 0.5 | x / y |", "| b | – |  |"]
  assert skeleton.table(["n"], [], "r") == ["| n |", "|---:|"]
  with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
    skeleton.table(["a", "b"], [], "l")
  with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
    skeleton.table(["a"], [], "c")
  with pytest.raises(ValueError, match="A row of 1 cells in a table of 2 columns"):
    skeleton.table(["a", "b"], [["x"]], "ll")


def test_report_text_and_write_report(tmp_path):
  text = skeleton.report_text(["# Title", None, ["para 1", "para 2"], skeleton.table(["a"], [[1]], "r"), "- end"],
                              [tmp_path / "fig_one.png", "two.png"])
  assert text == ("# Title\n\npara 1\npara 2\n\n| a |\n|---:|\n| 1 |\n\n- end\n\nFigures:\n\n"
                  "- ![fig_one](fig_one.png)\n- ![two](two.png)\n")
  assert skeleton.report_text(["# T"]) == "# T\n\nFigures:\n\n"
  path = skeleton.write_report(tmp_path, ["# T"], ["a.png"])
  assert str(path) == str(tmp_path / "report.md") and path.read_text() == "# T\n\nFigures:\n\n- ![a](a.png)\n"
  results = skeleton.write_results(tmp_path, {"x": [1, 2]})
  assert results.read_text() == json.dumps({"x": [1, 2]}, indent=1) + "\n"


def test_fmt():
  assert skeleton.fmt(0.12345) == "0.123" and skeleton.fmt(0.12345, ".2f") == "0.12"
  assert skeleton.fmt(3, ".0f") == "3" and skeleton.fmt(7, "d") == "7" and skeleton.fmt(0.5, ".1%") == "50.0%"
  assert skeleton.fmt(np.float32(0.25)) == "0.250" and skeleton.fmt(np.float64(1e-4), ".2e") == "1.00e-04"
  for missing in (None, float("nan"), math.inf, -math.inf, np.float32("nan"), np.float64("nan")):
    assert skeleton.fmt(missing) == "–", missing
