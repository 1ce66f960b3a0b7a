"""Everything that touches verl: the CPU platform, the engine hook, the loss adapter and the SFT trainers.

The only package of ranktuner_verl that imports verl.
"""
