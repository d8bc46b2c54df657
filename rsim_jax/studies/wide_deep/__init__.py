"""Nguyen, Raghu & Kornblith (ICLR 2021), "Do Wide and Deep Networks Learn the Same Things?" as a study.

  config   the model grid, the variants (`get_config`, `variants`), each model's training config, `plan`
  study    the analyses of one model and of model pairs, `run` (train → analyse → figures → report)
  figures  the report's figures, drawn from the cached results

`rsim study wide_deep --config local [--set field=value ...]` runs it; `rsim_jax.studies.skeleton` holds what
the studies share.
"""

from rsim_jax.studies.wide_deep.config import ModelSpec, WideDeepConfig, get_config, plan, train_config, variants
from rsim_jax.studies.wide_deep.study import (ANALYSIS_VERSION, analyse_model, cross_analysis, cross_seed_analysis,
                                              detect_block, population_analysis, pruning_analysis, run, write_report)

__all__ = ["ANALYSIS_VERSION", "ModelSpec", "WideDeepConfig", "analyse_model", "cross_analysis", "cross_seed_analysis",
           "detect_block", "get_config", "plan", "population_analysis", "pruning_analysis", "run", "train_config",
           "variants", "write_report"]
