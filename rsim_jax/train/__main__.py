"""`python -m rsim_jax.train --config FILE[:VARIANT] --workdir DIR [--set field=value ...]`."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m rsim_jax.train",
      description="Train a model from a config file (get_config(variant) -> TrainConfig); resumes from the "
      "latest checkpoint in --workdir.",
  )
  parser.add_argument("--config", required=True, help="config file and variant, e.g. "
                      "experiments/train_configs/resnet_digits.py:local")
  parser.add_argument("--workdir", required=True, help="output directory (config, metrics, checkpoints)")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a config field (VALUE parsed as JSON, else a string; dotted keys reach into dict "
                      "fields), e.g. --set num_epochs=2 --set model_kwargs.depth=56")
  args = parser.parse_args(argv)

  from rsim_jax.train import config as config_lib  # noqa: PLC0415
  from rsim_jax.train import loop  # noqa: PLC0415

  config = config_lib.load_config(args.config)
  for assignment in args.set:
    config = config_lib.parse_override(config, assignment)
  final = loop.train(config, args.workdir)
  print(json.dumps(final, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
