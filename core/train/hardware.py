"""What the machine can do, probed once (CUDA, bfloat16, TF32)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    device_name: str
    bf16: bool  # bfloat16 autocast is fast here
    tf32: bool  # TF32 matmuls (NVIDIA Ampere or newer)

    @classmethod
    def probe(cls) -> Hardware:
        if torch.cuda.is_available():
            major, _ = torch.cuda.get_device_capability()
            return cls(True, torch.cuda.get_device_name(), torch.cuda.is_bf16_supported(), major >= 8)
        return cls(False, "cpu", False, False)
