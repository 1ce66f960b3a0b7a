"""``python -m ranktuner_verl.eval``: see ``ranktuner_verl.eval.cli``."""

from ranktuner_verl.eval.cli import main

if __name__ == "__main__":  # not when a spawned data-parallel worker re-imports this module
    main()
