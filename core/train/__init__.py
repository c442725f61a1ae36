"""The training pipeline (imports torch): model assembly, data, Trainer, evaluation, the run.

Imported only by ``vlmplug train`` (and tests); it knows no concrete component, only the family
contracts documented in :mod:`vlmplug.hookspecs`.
"""
