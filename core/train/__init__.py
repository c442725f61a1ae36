"""The training pipeline (imports torch): model assembly, data, Trainer, evaluation, the run.

Imported only by ``vlmplug train`` (and tests); it knows no concrete component, only the family
contracts documented in :mod:`vlmplug.hookspecs`.
"""

import logging as _logging
import os as _os


def _quiet_optional_backends() -> None:
    """Keep two start-up messages of optional libraries out of every run's output:

    * bitsandbytes (imported by peft when installed) warns on CPUs with AVX512-BF16 that it cannot
      fetch an optional hub kernel for its packed CPU inference path, which vlmplug's ``qlora`` turns
      off (the packing is lossy; see ``vlmplug.plugins.peft._qlora``);
    * DeepSpeed (imported by accelerate when installed) warns when it has to guess its accelerator on
      a machine without CUDA; telling it ``cpu`` there is what it would guess anyway.
    """
    _logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
    if "DS_ACCELERATOR" not in _os.environ:
        import torch

        if not torch.cuda.is_available():
            _os.environ["DS_ACCELERATOR"] = "cpu"


_quiet_optional_backends()
