"""Evaluation: sampling completions for the math benchmarks, grading them with math-verify, Pass@k and tables.

- ``ranktuner_verl.eval.generate``: resumable sampling with the "hf" (transformers) or "vllm" backend.
- ``ranktuner_verl.eval.grading``: final-answer extraction (last ``\\boxed{}`` and fall-backs) and math-verify
  comparison with a per-answer timeout.
- ``ranktuner_verl.eval.metrics``: the unbiased Pass@k estimator; Pass@1 as mean accuracy.
- ``ranktuner_verl.eval.tables``: result folders -> the paper's table (Markdown, CSV, LaTeX).
- ``ranktuner_verl.eval.cli``: ``python -m ranktuner_verl.eval run | grade | table``.
"""
