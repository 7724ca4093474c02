"""The two rooms the CLIs drive: the validator (engine/validator.py) and the trainer (engine/trainer/).

engine/ builds on models/ and utils/; train.py and val.py are thin command lines around it, and nothing
here imports a CLI script.
"""
