"""End-to-end studies: `rsim study NAME --config VARIANT --workdir DIR`.

A study trains (or reuses) the models its config names, streams their activations through the kernels, runs
the analyses of `rsim_jax.analysis`, and writes JSON, figures and `report.md` into its work directory. Every
stage resumes: finished models and finished extractions are not redone.
"""

STUDIES = ("wide_deep", "intrinsic_dim", "mitosis")
