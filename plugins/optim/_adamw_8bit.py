"""bitsandbytes' ``AdamW8bit`` (or ``PagedAdamW8bit``) over :func:`vlmplug.train.modules.parameter_groups`,
with the run's betas, epsilon, learning rate and weight decay."""

from __future__ import annotations

from typing import Any

from vlmplug.contracts import OptimizerStackComponent

from ._flash_attention import check_gpu


class Adamw8bit(OptimizerStackComponent):
    def __init__(self, config: Any):
        self.config = config

    def create_optimizer(self, model: Any, args: Any) -> Any:
        import bitsandbytes as bnb

        from vlmplug.train.modules import parameter_groups

        groups = [{k: v for k, v in g.items() if k != "part"} for g in parameter_groups(model, args)]
        cls = bnb.optim.PagedAdamW8bit if self.config.paged else bnb.optim.AdamW8bit
        return cls(
            groups,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
            min_8bit_size=self.config.min_8bit_size,
        )


def build(config: Any, ctx: Any) -> Adamw8bit:
    if config.paged:
        check_gpu(getattr(ctx, "hardware", None), "adamw-8bit with paged: true", "set paged: false")
    return Adamw8bit(config)
