"""Evaluation: sampling completions for the math benchmarks, grading them with math-verify, Pass@k and tables.

- ``ranktuner_verl.eval.grading``: final-answer extraction (last ``\\boxed{}`` and fall-backs) and math-verify
  comparison with a per-answer timeout.
"""
