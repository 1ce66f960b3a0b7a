"""Benchmarks and the GPU check, each printing ratios against a baseline measured in the same run.

- ``python -m ranktuner_verl.bench``: each method's weighted loss against plain NLL (``core``).
- ``python -m ranktuner_verl.bench.trainer``: step time through verl's SFT trainer, against ``loss=sft``.
- ``python -m ranktuner_verl.bench.fused``: peak memory and time with verl's fused kernels, against fused sft.
- ``python -m ranktuner_verl.bench.rl``: actor update time of the policy losses, against verl's ``vanilla``.
- ``python -m ranktuner_verl.bench.gpu_check``: accuracy against the fp64 oracle, then the cost, on a GPU.
- ``python -m ranktuner_verl.bench.sandbox``: time per HumanEval program in each isolation, against none.

Their cases come from the registry and their targets sit beside them in ``cases``.
"""
