"""Evaluation: sampling completions for the benchmarks, grading them, Pass@k and tables.

- ``ranktuner_verl.eval.benchmarks``: the one registry of benchmarks (math, multiple choice, code) and loaders.
- ``ranktuner_verl.eval.backends``: the "hf" (transformers) and "vllm" backends; stop tokens; per-problem requests.
- ``ranktuner_verl.eval.generate``: resumable sampling into a result folder; the token budget.
- ``ranktuner_verl.eval.grading``: final-answer extraction and math-verify comparison with a per-answer timeout;
  ``qwen_grader``: the Qwen2.5-Math harness's rules; ``choice``: multiple choice; ``code``: HumanEval execution.
- ``ranktuner_verl.eval.metrics``: the unbiased Pass@k estimator; Pass@1 as mean accuracy.
- ``ranktuner_verl.eval.tables``: result folders (seeds) -> the paper's table with 95% intervals (Markdown, CSV,
  LaTeX).
- ``ranktuner_verl.eval.agreement``: how the two math graders agree on the benchmark files.
- ``ranktuner_verl.eval.cli``: ``python -m ranktuner_verl.eval run | grade | table | agreement``.
"""
