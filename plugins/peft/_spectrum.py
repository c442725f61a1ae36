"""The ``spectrum`` PEFT method: freeze everything, then unfreeze the selected weights in place.

Selection per part (see ``spectrum.py``): the LLM from a YAML, an SNR file or a scan at start;
the connector and vision tower by their own budgets. A pattern list is matched with ``re.match``
against each part's parameter names, as trainers read the reference YAML. The LLM saves as a plain
transformers model (like ``full``), and the selection is saved next to it (``spectrum/``), in the
reference's file formats.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from . import _spectrum_snr as snr_lib
from ._full import FullFineTuning

#: Selection directory written beside the saved LLM.
SELECTION_DIR = "spectrum"


class SpectrumMethod(FullFineTuning):
    def __init__(self, config: Any, ctx: Any = None):
        self.config = config
        self.ctx = ctx
        self.freeze: set[str] = set()
        #: part -> the SNR scan it was selected from (empty when the LLM came from a YAML)
        self.snr: dict[str, dict[str, dict[str, Any]]] = {}
        #: part -> the unfrozen_parameters patterns applied to it
        self.patterns: dict[str, list[str]] = {}

    def _llm_patterns(self, llm: nn.Module) -> list[str]:
        c = self.config
        if c.unfrozen_parameters:
            return snr_lib.read_patterns(c.unfrozen_parameters)
        scores = snr_lib.read_snr(c.snr_results) if c.snr_results else snr_lib.scan(llm)
        self.snr["llm"] = scores
        selection = snr_lib.select(scores, c.top_percent)
        self._note_empty_types(scores, selection, c.top_percent)
        head = list(snr_lib.EMBEDDING_PATTERNS) if c.train_embeddings else []
        return head + [name for names in selection.values() for name in names]

    def _note_empty_types(self, scores: Any, selection: dict[str, list[str]], top_percent: float) -> None:
        """The reference floors ``count * top_percent / 100``: with few layers a type may get none."""
        embeddings = {"lm_head", "model.embed_tokens"} if self.config.train_embeddings else set()
        ranked = [t for t in selection if t not in embeddings]  # embeddings and head: train_embeddings
        empty = sorted(t for t in ranked if not selection[t])
        if empty and self.ctx is not None:
            self.ctx.note(
                f"spectrum: top_percent {top_percent:g} keeps no layer of {len(empty)} of {len(ranked)} weight "
                f"types ({', '.join(empty[:4])}{', ...' if len(empty) > 4 else ''}): the reference floors "
                f"layers x percent; raise top_percent to train them"
            )

    def _part_patterns(self, part: str, module: nn.Module, top_percent: float) -> list[str]:
        if top_percent <= 0:
            return []
        if top_percent >= 100:
            return [".*"]
        scores = snr_lib.scan(module)
        self.snr[part] = scores
        return [name for names in snr_lib.select(scores, top_percent).values() for name in names]

    def apply(self, vlm: Any) -> Any:
        c = self.config
        for p in vlm.parameters():
            p.requires_grad_(False)
        llm = vlm.llm
        self.patterns = {
            "llm": self._llm_patterns(llm),
            "connector": self._part_patterns("connector", vlm.connector, c.connector_top_percent),
            "vision_encoder": self._part_patterns("vision_encoder", vlm.vision_encoder, c.vision_top_percent),
        }
        if getattr(vlm.vision_encoder, "trains_from_scratch", False):
            self.patterns["vision_encoder"] = [".*"]  # nothing pretrained to rank
        modules = {"llm": llm, "connector": vlm.connector, "vision_encoder": vlm.vision_encoder}
        for part, module in modules.items():
            compiled = [re.compile(p) for p in self.patterns[part]]
            for name, p in module.named_parameters():
                p.requires_grad_(any(rx.match(name) for rx in compiled))
        for p in vlm.fusion_modules.parameters() if vlm.fusion_modules is not None else ():
            p.requires_grad_(True)
        if not any(p.requires_grad for p in llm.parameters()) and self.patterns["llm"]:
            raise ValueError(
                "spectrum: no LLM parameter matches the unfrozen_parameters patterns (first: "
                f"{self.patterns['llm'][0]!r}); were they made for another model?"
            )
        vlm.peft_method = self
        return vlm

    def save_llm(self, vlm: Any, directory: str) -> dict[str, str]:
        """The LLM in full (``llm/``), and the selection in the reference's formats (``spectrum/``)."""
        written = super().save_llm(vlm, directory)
        out = Path(directory) / SELECTION_DIR
        out.mkdir(parents=True, exist_ok=True)
        for part, scores in self.snr.items():
            snr_lib.write_results(scores, out, part, self._budget(part), embeddings=part == "llm")
        lines = ["unfrozen_parameters:", *(f"- {p}" for p in self.patterns.get("llm", []))]
        (out / "llm_unfrozen_parameters.yaml").write_text("\n".join(lines) + "\n")
        return {**written, "spectrum": SELECTION_DIR}

    def _budget(self, part: str) -> float:
        c = self.config
        return {"llm": c.top_percent, "connector": c.connector_top_percent}.get(part, c.vision_top_percent)

    def load_llm(self, directory: str, files: Mapping[str, str], load_base: Callable[[], Any]) -> Any:
        return super().load_llm(directory, files, load_base)


def build(config: Any, ctx: Any) -> SpectrumMethod:
    return SpectrumMethod(config, ctx)
