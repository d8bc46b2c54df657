"""`rsim_jax.configs`: `--set path=VALUE` overrides of the study configs, their JSON form, and the resume rule
(`rsim study NAME --config V --set ... [--dry-run]`)."""

import dataclasses
import json
import os

import pytest

from rsim_jax import cli, configs
from rsim_jax.studies import intrinsic_dim, mitosis, wide_deep
from rsim_jax.train import TrainConfig
from rsim_jax.train.config import parse_override

# --- apply_overrides ---


def test_top_level_tuples_become_tuples_and_the_base_is_untouched():
  base = wide_deep.get_config("local")
  cfg = configs.apply_overrides(base, ["widths=[1,2,4]", "fraction_architectures=[[20, 1]]"])
  assert cfg.widths == (1, 2, 4) and isinstance(cfg.widths, tuple)
  assert cfg.fraction_architectures == ((20, 1),) and isinstance(cfg.fraction_architectures[0], tuple)
  assert base.widths == (1, 2) and base.fraction_architectures == ((20, 1), (56, 1))
  assert [s.name for s in cfg.models()].count("resnet20_x4_seed0") == 1  # the grid follows the override
  # A config that round-trips through an override of its own values is the same config.
  assert configs.apply_overrides(base, ["widths=[1, 2]"]) == base


def test_nested_train_key_sets_one_key_and_keeps_the_others():
  base = wide_deep.get_config("local")
  cfg = configs.apply_overrides(base, ["train.num_epochs=3", "train.data=cifar10", "train.step_boundaries=[0.3]"])
  assert cfg.train == {**base.train, "num_epochs": 3, "data": "cifar10", "step_boundaries": (0.3,)}
  assert base.train["num_epochs"] == 40 and base.train["data"] == "digits"
  assert wide_deep.train_config(cfg, cfg.models()[0]).num_epochs == 3
  # Two dicts down: a key of the TrainConfig's model_kwargs, the other kwargs kept.
  base = intrinsic_dim.get_config("local")
  cfg = configs.apply_overrides(base, ["train.model_kwargs.kernel_size=5", "train.model_kwargs.conv_features=[8]"])
  assert cfg.train["model_kwargs"] == {**base.train["model_kwargs"], "kernel_size": 5, "conv_features": (8,)}
  # A study's own extra key of its train dict (wide_deep's fixed-size base training set).
  cfg = configs.apply_overrides(wide_deep.get_config("local"), ["train.train_examples=500"])
  assert cfg.train["train_examples"] == 500


def test_bool_null_and_bare_string_values():
  overrides = ["pruning=false", "max_eval_examples=null", "subset_budget=epochs", "train.augment=true"]
  cfg = configs.apply_overrides(wide_deep.get_config("local"), overrides)
  assert (cfg.pruning, cfg.max_eval_examples, cfg.subset_budget, cfg.train["augment"]) == (False, None, "epochs", True)
  cfg = configs.apply_overrides(mitosis.get_config("local"), ["early_epochs=null", "layer=logits"])
  assert (cfg.early_epochs, cfg.layer) == (None, "logits")


@pytest.mark.parametrize("assignment, match", [
    # Unknown fields and keys, with the close match.
    ("widht=[1]", r"WideDeepConfig has no field 'widht'\. Did you mean 'widths'\?"),
    ("train.num_epoch=40", r"train\.num_epoch: 'num_epoch' is not a field of TrainConfig.*Did you mean 'num_epochs'"),
    ('train={"lr": 0.1, "shedule": "step"}', r"train\.shedule: 'shedule' is not a field of TrainConfig.*'schedule'"),
    # Values of the wrong type, named with the path and what it takes.
    ("pruning=1", r"pruning must be true or false; got 1 \(int\)"),
    ("train.num_epochs=forty", r"train\.num_epochs must be a number; got \"forty\" \(str\)\. VALUE is parsed as JSON"),
    ("widths=(1,2)", r"widths must be a list of integer; got \"\(1,2\)\""),
    ("seeds=[0.5]", r"seeds must be a list of integer"),
    ("max_eval_examples=1.5", r"max_eval_examples must be an integer or null"),
    ("cross_architectures=[[[56, 1], [20, 2, 3]]]", r"cross_architectures must be a list of \[\[integer, integer\]"),
    ("train.model_kwargs=[1]", r"train\.model_kwargs must be a dict"),
    # A path through a value that is not a config or a dict; the config's own validation; no '='.
    ("widths.0=3", r"widths is \[1, 2\] \(list\), not a config or a dict.*set widths whole \(widths=VALUE\)"),
    ("max_eval_examples.x=3", r"max_eval_examples is null \(null\), not a config or a dict"),
    ("subset_budget=step", r"Override 'subset_budget=step': `subset_budget` must be 'steps' or 'epochs'"),
    ("widths", r"not of the form field=value"),
])
def test_errors_name_the_field_and_the_fix(assignment, match):
  with pytest.raises(ValueError, match=match):
    configs.apply_overrides(wide_deep.get_config("local"), [assignment])


def test_a_study_without_the_extra_key_refuses_it():
  with pytest.raises(ValueError, match=r"'train_examples' is not a field of TrainConfig"):
    configs.apply_overrides(mitosis.get_config("local"), ["train.train_examples=500"])


def test_rsim_train_set_takes_dotted_keys_and_checks_types():
  config = parse_override(TrainConfig(), "model_kwargs.width=2")
  assert config.model_kwargs == {"depth": 20, "width": 2}
  assert parse_override(config, "step_boundaries=[0.3, 0.6]").step_boundaries == (0.3, 0.6)
  with pytest.raises(ValueError, match=r"TrainConfig has no field 'epochs'\. Did you mean 'num_epochs'"):
    parse_override(config, "epochs=3")
  with pytest.raises(ValueError, match=r"nesterov must be true or false"):
    parse_override(config, "nesterov=yes")


# --- rsim study --set --dry-run ---


def test_dry_run_shows_the_overridden_plan(capsys):
  assert cli.main(["study", "mitosis", "--config", "local", "--dry-run"]) == 0
  default = capsys.readouterr().out
  assert "9 model(s) in mitosis:local\n" in default and "overridden" not in default
  assert cli.main(["study", "mitosis", "--config", "local", "--set", "widths=[1]", "--set", "train.num_epochs=7",
                   "--dry-run"]) == 0
  out = capsys.readouterr().out
  # widths (1, 2, 4) → (1): one zero-error net and its early twin, plus the 3 ensemble seeds of width 1.
  assert "5 model(s) in mitosis:local with --set widths=[1] --set train.num_epochs=7" in out
  assert "  train.num_epochs: 15 → 7\n" in out and "  widths: [1, 2, 4] → [1]\n" in out
  rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  assert [r["name"] for r in rows] == ["wrn10_1", "wrn10_1_early", "wrn10_1_seed1", "wrn10_1_seed2", "wrn10_1_seed3"]
  assert [r["num_epochs"] for r in rows] == [7, 3, 7, 7, 7]


def test_dry_run_refuses_a_bad_override_with_the_field_named():
  with pytest.raises(SystemExit, match=r"rsim study wide_deep:local: Override 'widht=\[1\]'.*'widths'"):
    cli.main(["study", "wide_deep", "--config", "local", "--set", "widht=[1]", "--dry-run"])
  # Validation of every model's TrainConfig (the plan) happens before anything runs.
  with pytest.raises(SystemExit, match=r"schedule='cosin'"):
    cli.main(["study", "wide_deep", "--config", "local", "--set", "train.schedule=cosin", "--dry-run"])


# --- the resume rule ---


def test_check_resume_records_the_config_and_refuses_changes_to_results(tmp_path):
  cfg = wide_deep.get_config("tiny")
  target = configs.check_resume(tmp_path, cfg)
  assert target == tmp_path / "study_config.json"
  assert json.loads(target.read_text()) == configs.config_to_dict(cfg) == json.loads(configs.config_to_json(cfg))
  assert configs.config_to_dict(cfg)["widths"] == [1, 2]
  stamp = os.stat(target).st_mtime_ns
  configs.check_resume(tmp_path, cfg)  # the same config resumes; the file is not rewritten
  assert os.stat(target).st_mtime_ns == stamp

  # Fields that change results: every one listed old → new, the fix named; the record is kept.
  changed = configs.apply_overrides(cfg, ["train.num_epochs=2", "widths=[1]", "block_threshold=0.8"])
  with pytest.raises(ValueError, match=r"fields \['block_threshold', 'train\.num_epochs', 'widths'\] differ") as e:
    configs.check_resume(tmp_path, changed)
  message = str(e.value)
  for line in ("  block_threshold: 0.9 → 0.8", "  train.num_epochs: 1 → 2", "  widths: [1, 2] → [1]"):
    assert line in message
  assert "use a new work directory (--workdir)" in message and "the same --config and --set" in message
  assert json.loads(target.read_text()) == configs.config_to_dict(cfg)

  # Fields that do not (WideDeepConfig.RUN_ONLY_FIELDS) resume, and the record follows them.
  quiet = configs.apply_overrides(cfg, ["train.progress=true", "train.checkpoint_every_steps=2"])
  configs.check_resume(tmp_path, quiet)
  assert json.loads(target.read_text())["train"]["progress"] is True
  configs.check_resume(tmp_path, cfg)


def test_intrinsic_dim_checkpoint_interval_changes_its_results(tmp_path):
  # Its profiles are per checkpoint, so unlike wide_deep the checkpoint interval is not run-only there.
  cfg = intrinsic_dim.get_config("tiny")
  configs.check_resume(tmp_path, cfg)
  configs.check_resume(tmp_path, configs.apply_overrides(cfg, ["train.progress=true"]))
  with pytest.raises(ValueError, match=r"train\.checkpoint_every_steps: 3 → 2"):
    configs.check_resume(tmp_path, configs.apply_overrides(cfg, ["train.checkpoint_every_steps=2"]))


def test_a_field_added_since_the_record_reads_as_its_default(tmp_path):
  cfg = mitosis.get_config("tiny")
  saved = configs.config_to_dict(cfg)
  del saved["clone_threshold"]  # a study_config.json written before the field existed
  (tmp_path / "study_config.json").write_text(json.dumps(saved))
  configs.check_resume(tmp_path, cfg)
  assert json.loads((tmp_path / "study_config.json").read_text())["clone_threshold"] == 2.0
  with pytest.raises(ValueError, match=r"clone_threshold: 2\.0 → 3\.0"):
    configs.check_resume(tmp_path, dataclasses.replace(cfg, clone_threshold=3.0))


def test_train_runs_use_the_same_rule(tmp_path):
  configs.check_resume(tmp_path, TrainConfig(), filename="config.json")
  assert TrainConfig.from_json((tmp_path / "config.json").read_text()) == TrainConfig()
  configs.check_resume(tmp_path, TrainConfig(progress=False, log_every_steps=7), filename="config.json")
  with pytest.raises(ValueError, match=r"fields \['lr', 'model_kwargs\.depth'\] differ(.|\n)*  lr: 0\.1 → 0\.2"):
    configs.check_resume(tmp_path, TrainConfig(lr=0.2, model_kwargs={"depth": 56}), filename="config.json")


def test_rsim_study_checks_the_workdir_before_running(tmp_path, monkeypatch):
  ran = []
  monkeypatch.setattr(wide_deep, "run", lambda cfg, workdir: ran.append((cfg, str(workdir))) or "report.md")
  workdir = str(tmp_path / "study")
  argv = ["study", "wide_deep", "--config", "tiny", "--workdir", workdir, "--set", "train.num_steps=4"]
  assert cli.main(argv) == 0
  expected = configs.apply_overrides(wide_deep.get_config("tiny"), ["train.num_steps=4"])
  assert ran == [(expected, workdir)]
  assert json.loads((tmp_path / "study" / "study_config.json").read_text()) == configs.config_to_dict(expected)
  assert cli.main(argv + ["--set", "train.progress=true"]) == 0  # run-only: resumes
  with pytest.raises(SystemExit, match=r"train\.num_steps: 4 → 6(.|\n)*--workdir"):
    cli.main(argv[:-2])  # the variant's own num_steps (6) in the directory of the num_steps=4 run
  assert len(ran) == 2
