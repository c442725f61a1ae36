"""What a sharded run needs before the model is saved and evaluated.

Under DeepSpeed ZeRO-3 (Rajbhandari et al. 2020) each process holds only a shard of every parameter
(an empty tensor in the module). :func:`gather_sharded_parameters` makes the model whole again on
every process: a collective, called by all of them after training, one parameter at a time in the
model's order, so that the main process can write ``model/`` in the usual format, evaluate it, and
return it. A model that is not sharded is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["gather_sharded_parameters"]


def gather_sharded_parameters(vlm: Any, say: Callable[[str], None]) -> int:
    """Replace every ZeRO-3-partitioned parameter of ``vlm`` with a whole copy (tied weights stay tied:
    one new parameter per old one); return how many were gathered."""
    sharded = {id(p): p for p in vlm.parameters() if hasattr(p, "ds_id")}
    if not sharded:
        return 0
    import deepspeed
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    whole = {}
    for key, p in sharded.items():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            whole[key] = torch.nn.Parameter(p.data.detach().clone(), requires_grad=p.requires_grad)
    for module in vlm.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in whole:
                module._parameters[name] = whole[id(p)]
    unset_hf_deepspeed_config()  # else generate() would wait for every process at each token
    numel = sum(p.numel() for p in whole.values())
    say(f"  gathered {len(whole)} ZeRO-3 parameters ({numel / 1e6:.2f}M values) from every process for saving")
    return len(whole)
