"""Equality tests for the vlmplug <-> LLaVA-HF conversion (``vlmplug.plugins.interop._llava_convert``).

Every case builds tiny random parts, composes them the way vlmplug's interleaved fusion does
(:func:`vlmplug_logits` / :func:`vlmplug_generate` below), exports them, loads the result with plain
transformers, and checks that the processor produces the same token ids and the loaded model the
same logits and greedy continuation; then it imports the checkpoint back and checks that the parts
are weight-for-weight identical and compose to the same logits. Cases run with a CLIP tower and
with a SigLIP tower (no CLS token: LLaVA's "full" strategy, no additional image token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vlmplug.plugins.interop._llava_convert import (
    VOCAB_SIZE_FIELD,
    ConnectorKind,
    LlavaExportError,
    LlavaParts,
    export_llava_hf,
    import_llava_hf,
    unwrap_chat_template,
)

torch.set_num_threads(1)

IMAGE = "<image>"
SPECIALS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{%- for m in messages -%}<|{{ m['role'] }}|> {{ m['content'] }}<|end|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
TEXTS = [
    "what colour is the square",
    "a red square on a blue field",
    "compare the two pictures",
    "the left one is green and the right one is yellow",
] * 8
VISION_HIDDEN, TEXT_HIDDEN, IMAGE_SIZE, PATCH = 32, 48, 32, 8
ATOL = 1e-4
NEW_TOKENS = 5


# ----------------------------------------------------------------------------------------------
# tiny parts
# ----------------------------------------------------------------------------------------------


def build_tokenizer(image_in_vocab: bool) -> Any:
    """A byte-fallback BPE tokenizer like vlmplug's tiny one.

    ``image_in_vocab``: the image token is one of the trained special tokens (a low id, inside the
    LLM vocabulary); otherwise it is added afterwards and gets the first id past the LLM vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="\u2581", prepend_scheme="always")]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    specials = [*SPECIALS, *([IMAGE] if image_in_vocab else []), *bytes_]
    tok.train_from_iterator(
        TEXTS,
        trainer=trainers.BpeTrainer(vocab_size=64 + len(bytes_), special_tokens=specials, show_progress=False),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>")
    fast.add_special_tokens({"additional_special_tokens": [IMAGE]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


class Connector(nn.Module):
    """vlmplug's ``Projector``: the layers live under ``proj``."""

    def __init__(self, layers: nn.Module):
        super().__init__()
        self.proj = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


ACTS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def build_connector(kind: str, act: str | None, bias: bool = True, depth: int = 2) -> Connector:
    """vlmplug's ``linear`` (one layer) or ``mlp`` (``depth`` layers, ``act`` between them) connector."""
    if kind == "linear":
        return Connector(nn.Linear(VISION_HIDDEN, TEXT_HIDDEN, bias=bias))
    layers: list[nn.Module] = [nn.Linear(VISION_HIDDEN, TEXT_HIDDEN)]
    for _ in range(depth - 1):
        layers += [ACTS[act or "gelu"](), nn.Linear(TEXT_HIDDEN, TEXT_HIDDEN)]
    return Connector(nn.Sequential(*layers))


def connector_from_parts(parts: LlavaParts) -> Connector:
    bias = "proj.bias" in parts.connector_state_dict
    module = build_connector(parts.connector_kind, parts.connector_act, bias=bias)
    module.load_state_dict(parts.connector_state_dict, strict=True)
    return module.to(parts.llm.dtype)


@dataclass(frozen=True)
class Case:
    tie: bool
    connector: str  # "linear", "linear_nobias" or "mlp"
    act: str | None
    drop_cls: bool
    feature_layer: int
    image_in_vocab: bool
    tower: str = "clip"  # or "siglip"

    @property
    def id(self) -> str:
        tower = "" if self.tower == "clip" else f"{self.tower}-"
        return tower + (
            f"{'tied' if self.tie else 'untied'}-{self.connector}{'-' + self.act if self.act else ''}-"
            f"{'dropcls' if self.drop_cls else 'keepcls'}-L{self.feature_layer}-"
            f"{'img-in-vocab' if self.image_in_vocab else 'img-past-vocab'}"
        )


def build_tower(tower: str) -> tuple[Any, Any]:
    """A tiny CLIP or SigLIP vision model (as vlmplug's tiny presets build them) and its processor."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    sizes = dict(
        hidden_size=VISION_HIDDEN,
        intermediate_size=2 * VISION_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    if tower == "siglip":
        vision = SiglipVisionModel(SiglipVisionConfig(**sizes, vision_use_head=False)).eval()
        return vision, SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    vision = CLIPVisionModel(CLIPVisionConfig(**sizes, projection_dim=VISION_HIDDEN)).eval()
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return vision, processor


def build_parts(case: Case, seed: int = 0) -> LlavaParts:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vision, processor = build_tower(case.tower)
    tokenizer = build_tokenizer(case.image_in_vocab)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    vocab = len(tokenizer) if case.image_in_vocab else image_id
    llm = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=TEXT_HIDDEN,
            intermediate_size=2 * TEXT_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            vocab_size=vocab,
            tie_word_embeddings=case.tie,
            initializer_range=0.2,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
    ).eval()
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    llm.generation_config.eos_token_id = tokenizer.eos_token_id
    kind: ConnectorKind = "linear" if case.connector.startswith("linear") else "mlp"
    connector = build_connector(kind, case.act, bias=case.connector != "linear_nobias")
    return LlavaParts(
        vision_model=vision,
        image_processor=processor,
        feature_layer=case.feature_layer,
        drop_cls=case.drop_cls,
        connector_kind=kind,
        connector_state_dict={k: v.detach().clone() for k, v in connector.state_dict().items()},
        llm=llm,
        tokenizer=tokenizer,
        image_token=IMAGE,
        connector_act=case.act if kind == "mlp" else None,
    )


# ----------------------------------------------------------------------------------------------
# the vlmplug-side composition (interleaved fusion)
# ----------------------------------------------------------------------------------------------


def vlmplug_prompt_ids(parts: LlavaParts, messages: list[dict[str, str]], n_images: int) -> list[int]:
    """Render with the tokenizer's chat template, tokenize, expand each image token (SampleEncoder)."""
    text = parts.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = parts.tokenizer(text, add_special_tokens=False)["input_ids"]
    image_id = parts.image_token_id
    assert sum(t == image_id for t in ids) == n_images
    out: list[int] = []
    for t in ids:
        out += [t] * parts.tokens_per_image if t == image_id else [t]
    return out


def vlmplug_embeds(parts: LlavaParts, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Interleaved fusion: embed the text (image ids -> 0, as vlmplug will), overwrite image slots."""
    is_image = input_ids == parts.image_token_id
    embeds = parts.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
    vision = parts.vision_model
    hidden = vision(pixel_values=pixel_values.to(vision.dtype), output_hidden_states=True).hidden_states
    feats = hidden[parts.feature_layer]
    feats = feats[:, 1:] if parts.drop_cls else feats
    tokens = connector_from_parts(parts)(feats.to(parts.llm.dtype))
    assert tokens.shape[0] * tokens.shape[1] == int(is_image.sum())
    return embeds.masked_scatter(is_image.unsqueeze(-1).expand_as(embeds), tokens.to(embeds.dtype).reshape(-1))


@torch.no_grad()
def vlmplug_logits(parts: LlavaParts, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    embeds = vlmplug_embeds(parts, inputs["input_ids"], inputs["pixel_values"])
    return parts.llm(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits


@torch.no_grad()
def vlmplug_generate(parts: LlavaParts, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    embeds = vlmplug_embeds(parts, inputs["input_ids"], inputs["pixel_values"])
    return parts.llm.generate(
        inputs_embeds=embeds,
        attention_mask=inputs["attention_mask"],
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
    )


# ----------------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------------


def make_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


# one image already at the tower's size, one that must be resized and centre-cropped
IMAGES = [make_image(IMAGE_SIZE, IMAGE_SIZE, 1), make_image(56, 40, 2)]
MESSAGES = [{"role": "user", "content": f"{IMAGE}\ncompare the two pictures {IMAGE} what colour"}]
LIST_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "user",
        "content": [
            {"type": "image"},
            {"type": "text", "text": "\ncompare the two pictures "},
            {"type": "image"},
            {"type": "text", "text": " what colour"},
        ],
    }
]


def load_exported(path: Path) -> tuple[Any, Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    return (
        LlavaForConditionalGeneration.from_pretrained(path).eval(),
        AutoModelForImageTextToText.from_pretrained(path).eval(),
        AutoProcessor.from_pretrained(path),
    )


def assert_parts_identical(a: LlavaParts, b: LlavaParts) -> None:
    assert_state_equal(a.vision_model.state_dict(), b.vision_model.state_dict())
    assert config_fields(a.vision_model.config) == config_fields(b.vision_model.config)
    entries = a.vision_model.config.num_hidden_layers + 1  # hidden_states: embeddings + one per layer
    assert a.feature_layer % entries == b.feature_layer % entries  # 0 is exported as -entries
    assert a.drop_cls == b.drop_cls
    assert (a.connector_kind, a.connector_act) == (b.connector_kind, b.connector_act)
    assert_state_equal(a.connector_state_dict, b.connector_state_dict)
    assert_state_equal(a.llm.state_dict(), b.llm.state_dict())
    assert config_fields(a.llm.config) == config_fields(b.llm.config)  # incl. vocab_size, tie_word_embeddings
    tied_b = b.llm.get_output_embeddings().weight is b.llm.get_input_embeddings().weight
    assert tied_b == a.llm.config.tie_word_embeddings
    assert type(a.llm) is type(b.llm)
    assert (a.image_token, a.image_token_id) == (b.image_token, b.image_token_id)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    assert a.tokenizer.chat_template == b.tokenizer.chat_template
    assert (a.tokenizer.pad_token, a.tokenizer.eos_token) == (b.tokenizer.pad_token, b.tokenizer.eos_token)
    ipa, ipb = a.image_processor.to_dict(), b.image_processor.to_dict()
    for key in (
        "size",
        "crop_size",
        "do_resize",
        "do_center_crop",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "resample",
        "do_convert_rgb",
    ):
        va, vb = ipa.get(key), ipb.get(key)
        if isinstance(va, (tuple, list)):
            va, vb = list(va), list(vb)
        assert va == vb, key
    gen_a, gen_b = a.llm.generation_config, b.llm.generation_config
    assert (gen_a.eos_token_id, gen_a.pad_token_id, gen_a.suppress_tokens) == (
        gen_b.eos_token_id,
        gen_b.pad_token_id,
        gen_b.suppress_tokens,
    )


def config_fields(config: Any) -> dict[str, Any]:
    """A config's fields, less the bookkeeping that legitimately differs after a save/load."""
    skip = {"dtype", "_name_or_path", "transformers_version", "architectures"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------------------------
# the equality matrix
# ----------------------------------------------------------------------------------------------


# the full product of the four main switches, for the two common connectors ...
CASES = [
    Case(tie, connector, act, drop_cls, layer, in_vocab)
    for tie in (True, False)
    for connector, act, layer in (("mlp", "gelu", -2), ("linear", None, -1))
    for drop_cls in (True, False)
    for in_vocab in (True, False)
]
# ... plus the other activations, a bias-free linear connector and other feature layers
CASES += [
    Case(True, "mlp", "relu", False, 1, False),
    Case(False, "mlp", "silu", True, 0, True),
    Case(False, "linear_nobias", None, True, -3, False),
    Case(True, "linear_nobias", None, False, 2, True),
]
# ... and a SigLIP tower (never drop_cls: it has no CLS token)
CASES += [
    Case(True, "mlp", "gelu", False, -1, True, "siglip"),
    Case(False, "mlp", "gelu", False, -2, False, "siglip"),
    Case(True, "linear", None, False, -1, False, "siglip"),
    Case(False, "linear_nobias", None, False, 0, True, "siglip"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_export_matches_vlmplug_and_round_trips(case: Case, tmp_path: Path) -> None:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    parts = build_parts(case)
    out = export_llava_hf(parts, tmp_path / "llava")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava"
    assert config["vision_feature_select_strategy"] == ("default" if case.drop_cls else "full")
    assert config["vision_feature_layer"] == (case.feature_layer or -3)  # 0 is written as -(layers + 1)
    assert config["projector_hidden_act"] == (case.act or "linear")
    assert config["image_token_index"] == parts.image_token_id
    assert config["image_seq_length"] == parts.tokens_per_image
    assert config["vision_config"]["model_type"] == f"{case.tower}_vision_model"
    grid = (IMAGE_SIZE // PATCH) ** 2
    assert parts.tokens_per_image == grid + (1 if case.tower == "clip" and not case.drop_cls else 0)
    if case.image_in_vocab:
        assert VOCAB_SIZE_FIELD not in config
    else:
        assert config[VOCAB_SIZE_FIELD] == parts.image_token_id

    model, auto_model, processor = load_exported(out)
    assert isinstance(auto_model, LlavaForConditionalGeneration)
    assert isinstance(processor, LlavaProcessor)
    assert processor.num_additional_image_tokens == (1 if case.tower == "clip" else 0)
    assert type(model.model.vision_tower) is type(parts.vision_model)
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    assert tied == case.tie

    # the processor renders both message styles like the tokenizer and expands images like vlmplug
    prompt = parts.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert processor.apply_chat_template(LIST_MESSAGES, add_generation_prompt=True) == prompt
    assert processor.apply_chat_template(MESSAGES, add_generation_prompt=True) == prompt
    inputs = processor(images=IMAGES, text=prompt, return_tensors="pt")
    expected_ids = vlmplug_prompt_ids(parts, MESSAGES, n_images=len(IMAGES))
    assert inputs["input_ids"][0].tolist() == expected_ids
    assert tuple(inputs["pixel_values"].shape) == (2, 3, IMAGE_SIZE, IMAGE_SIZE)

    ref = vlmplug_logits(parts, inputs)
    vocab = parts.llm.config.vocab_size
    for hf_model in (model, auto_model):
        with torch.no_grad():
            logits = hf_model(**inputs).logits
        assert logits.shape[-1] == max(vocab, parts.image_token_id + 1)
        assert torch.allclose(logits[..., :vocab], ref, atol=ATOL, rtol=0), (logits[..., :vocab] - ref).abs().max()
        assert not logits[..., vocab:].any()  # appended rows are zero, so are their logits

    ref_gen = vlmplug_generate(parts, inputs)
    hf_gen = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert hf_gen[:, inputs["input_ids"].shape[1] :].tolist() == ref_gen.tolist()

    # round trip: identical weights, identical composition
    back = import_llava_hf(out)
    assert_parts_identical(parts, back)
    assert torch.equal(vlmplug_logits(back, inputs), ref)
    assert torch.equal(vlmplug_generate(back, inputs), ref_gen)


def test_batch_of_prompts_with_left_padding(tmp_path: Path) -> None:
    """Two prompts with different numbers of images in one left-padded batch."""
    parts = build_parts(Case(False, "mlp", "gelu", True, -2, False), seed=3)
    model, _, processor = load_exported(export_llava_hf(parts, tmp_path / "llava"))
    processor.tokenizer.padding_side = "left"
    prompts = [
        parts.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in (MESSAGES, [{"role": "user", "content": f"what colour is the square {IMAGE}"}])
    ]
    images = [*IMAGES, make_image(70, 33, 4)]
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    assert inputs["attention_mask"][1, 0] == 0  # the shorter prompt is padded on the left
    ref = vlmplug_logits(parts, inputs)
    with torch.no_grad():
        logits = model(**inputs).logits[..., : parts.llm.config.vocab_size]
    keep = inputs["attention_mask"].bool()
    assert torch.allclose(logits[keep], ref[keep], atol=ATOL, rtol=0)
    ref_gen = vlmplug_generate(parts, inputs)
    hf_gen = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert hf_gen[:, inputs["input_ids"].shape[1] :].tolist() == ref_gen.tolist()


def test_appended_image_row_is_never_generated(tmp_path: Path) -> None:
    """The exported generation config suppresses the appended image-token row, even when its
    logit would win (here: the row is pointed at the last hidden state)."""
    parts = build_parts(Case(False, "mlp", "gelu", True, -2, False))
    model, _, processor = load_exported(export_llava_hf(parts, tmp_path / "llava"))
    image_id = parts.image_token_id
    assert model.generation_config.suppress_tokens == [image_id]
    prompt = parts.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=IMAGES, text=prompt, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1]
        model.lm_head.weight[image_id] = 100 * hidden / hidden.norm()
        assert model(**inputs).logits[0, -1].argmax() == image_id
    out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert out[0, -1].item() == vlmplug_generate(parts, inputs)[0, 0].item() != image_id


def test_processor_chat_template_with_images_in_messages(tmp_path: Path) -> None:
    """``processor.apply_chat_template(tokenize=True)`` with PIL images in the messages."""
    parts = build_parts(Case(True, "mlp", "gelu", False, -2, True))
    model, _, processor = load_exported(export_llava_hf(parts, tmp_path / "llava"))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": IMAGES[0]},
                {"type": "text", "text": "\ncompare the two pictures "},
                {"type": "image", "image": IMAGES[1]},
                {"type": "text", "text": " what colour"},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["input_ids"][0].tolist() == vlmplug_prompt_ids(parts, MESSAGES, n_images=2)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.allclose(logits, vlmplug_logits(parts, inputs), atol=ATOL, rtol=0)
    # the tokenizer saved with the processor carries the wrapped template; import unwraps it
    assert processor.tokenizer.chat_template != CHAT_TEMPLATE
    assert unwrap_chat_template(processor.tokenizer.chat_template, IMAGE) == CHAT_TEMPLATE


def test_re_export_of_an_import_is_identical(tmp_path: Path) -> None:
    parts = build_parts(Case(False, "linear", None, False, -1, False))
    first = export_llava_hf(parts, tmp_path / "a")
    second = export_llava_hf(import_llava_hf(first), tmp_path / "b")
    from safetensors.torch import load_file

    assert_state_equal(load_file(first / "model.safetensors"), load_file(second / "model.safetensors"))
    for name in (
        "config.json",
        "generation_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
    ):
        assert (first / name).read_text() == (second / name).read_text(), name


def test_export_leaves_the_parts_unchanged(tmp_path: Path) -> None:
    parts = build_parts(Case(True, "mlp", "gelu", True, -2, False))
    before = {k: v.clone() for k, v in parts.llm.state_dict().items()}
    vocab_before = parts.llm.get_input_embeddings().weight.shape
    export_llava_hf(parts, tmp_path / "llava")
    assert parts.llm.get_input_embeddings().weight.shape == vocab_before
    assert_state_equal(before, parts.llm.state_dict())
    assert parts.tokenizer.chat_template == CHAT_TEMPLATE


def test_imported_linear_projector_with_nonidentity_second_layer_is_folded(tmp_path: Path) -> None:
    """A foreign checkpoint with projector_hidden_act 'linear' and an arbitrary linear_2."""
    from safetensors.torch import load_file, save_file

    parts = build_parts(Case(False, "linear", None, True, -2, True))
    out = export_llava_hf(parts, tmp_path / "llava")
    state = load_file(out / "model.safetensors")
    key = next(k for k in state if k.endswith("multi_modal_projector.linear_2.weight"))
    state[key] = torch.randn_like(state[key]) * 0.3
    state[key.replace("weight", "bias")] = torch.randn_like(state[key.replace("weight", "bias")])
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model, _, processor = load_exported(out)
    prompt = parts.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=IMAGES, text=prompt, return_tensors="pt")
    back = import_llava_hf(out)
    assert back.connector_kind == "linear"
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.allclose(vlmplug_logits(back, inputs), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("image_in_vocab", [True, False])
def test_matches_vlmplug_own_modules(tmp_path: Path, image_in_vocab: bool) -> None:
    """vlmplug's ImagePipeline gives the processor's pixels, and its ClipVisionTower + Projector +
    InterleavedVLM give the exported model's logits (over the LLM's own vocabulary)."""
    from vlmplug.plugins.connectors._projectors import Projector
    from vlmplug.plugins.encoders._clip import ClipVisionTower, ImagePipeline
    from vlmplug.plugins.fusion._interleaved import InterleavedVLM

    parts = build_parts(Case(True, "mlp", "gelu", True, -2, image_in_vocab))
    model, _, processor = load_exported(export_llava_hf(parts, tmp_path / "llava"))
    pixels = ImagePipeline(parts.image_processor)(IMAGES)
    prompt = parts.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=IMAGES, text=prompt, return_tensors="pt")
    assert torch.allclose(pixels, inputs["pixel_values"], atol=1e-5, rtol=0)
    tower = ClipVisionTower(parts.vision_model, parts.image_processor, parts.feature_layer, parts.drop_cls, None)
    connector = Projector(connector_from_parts(parts).proj, tower.num_patches)
    vlm = InterleavedVLM(tower, connector, parts.llm, parts.image_token_id).eval()
    with torch.no_grad():
        ref = vlm(inputs["input_ids"], inputs["attention_mask"], pixels).logits
        logits = model(**inputs).logits
    assert torch.allclose(logits[..., : ref.shape[-1]], ref, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------
# what cannot be converted
# ----------------------------------------------------------------------------------------------


def test_depth_one_mlp_exports_as_linear(tmp_path: Path) -> None:
    parts = build_parts(Case(True, "mlp", "gelu", True, -2, True))
    parts.connector_state_dict = build_connector("mlp", "gelu", depth=1).state_dict()
    model, _, processor = load_exported(export_llava_hf(parts, tmp_path / "llava"))
    assert model.config.projector_hidden_act == "linear"
    prompt = parts.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=IMAGES, text=prompt, return_tensors="pt")
    ref = depth_one_mlp_logits(parts, inputs)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, ref, atol=ATOL, rtol=0)
    back = import_llava_hf(tmp_path / "llava")
    assert back.connector_kind == "linear"
    assert torch.equal(back.connector_state_dict["proj.weight"], parts.connector_state_dict["proj.0.weight"])


def depth_one_mlp_logits(parts: LlavaParts, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """vlmplug_logits for a depth-1 MLP connector (``proj.0`` inside a Sequential)."""
    linear = LlavaParts(
        **{
            **parts.__dict__,
            "connector_kind": "linear",
            "connector_state_dict": {"proj." + k[len("proj.0.") :]: v for k, v in parts.connector_state_dict.items()},
        }
    )
    return vlmplug_logits(linear, inputs)


def test_import_of_a_foreign_llava_checkpoint(tmp_path: Path) -> None:
    """A checkpoint written by transformers itself, LLaVA-1.5 style: the vocabulary padded past the
    tokenizer, the image token inside it, a list-content chat template of its own."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(5)
    tokenizer = build_tokenizer(image_in_vocab=False)
    template = (
        "{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
        "{% endif %}{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=VISION_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
        ),
        text_config=LlamaConfig(
            hidden_size=TEXT_HIDDEN,
            intermediate_size=96,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tokenizer) + 12,
            initializer_range=0.2,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path / "foreign")
    LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        chat_template=template,
        image_token=IMAGE,
        num_additional_image_tokens=1,
    ).save_pretrained(tmp_path / "foreign")

    parts = import_llava_hf(tmp_path / "foreign")
    assert (parts.feature_layer, parts.drop_cls, parts.connector_kind, parts.connector_act) == (
        -2,
        True,
        "mlp",
        "gelu",
    )
    assert parts.llm.config.vocab_size == len(tokenizer) + 12  # no vlmplug marker: the vocabulary is kept
    assert parts.tokenizer.chat_template == template
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour"}]}]
    processor = LlavaProcessor.from_pretrained(tmp_path / "foreign")
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=IMAGES[1:], text=prompt, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.allclose(vlmplug_logits(parts, inputs), expected, atol=ATOL, rtol=0)
    assert_state_equal(parts.vision_model.state_dict(), model.model.vision_tower.state_dict())


def test_export_rejects_deep_mlp(tmp_path: Path) -> None:
    parts = build_parts(Case(True, "mlp", "gelu", True, -2, True))
    parts.connector_state_dict = build_connector("mlp", "gelu", depth=3).state_dict()
    with pytest.raises(LlavaExportError, match="depth 3"):
        export_llava_hf(parts, tmp_path / "llava")


def test_export_rejects_bad_parts(tmp_path: Path) -> None:
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    parts = build_parts(Case(True, "mlp", "gelu", True, -2, True))
    bad = LlavaParts(**{**parts.__dict__, "connector_act": "gelu_new"})
    with pytest.raises(LlavaExportError, match="hidden_act"):
        export_llava_hf(bad, tmp_path / "a")
    bad = LlavaParts(**{**parts.__dict__, "feature_layer": -4})
    with pytest.raises(LlavaExportError, match="feature_layer"):
        export_llava_hf(bad, tmp_path / "b")
    bad = LlavaParts(
        **{
            **parts.__dict__,
            "image_processor": CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}),
        }
    )
    with pytest.raises(LlavaExportError, match="crop_size"):
        export_llava_hf(bad, tmp_path / "c")
    siglip = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    with pytest.raises(LlavaExportError, match="SigLIP tower has no CLS token"):
        export_llava_hf(LlavaParts(**{**parts.__dict__, "vision_model": siglip, "drop_cls": True}), tmp_path / "d")
    with pytest.raises(LlavaExportError, match="CLIPVisionModel or SiglipVisionModel, got Linear"):
        export_llava_hf(LlavaParts(**{**parts.__dict__, "vision_model": nn.Linear(2, 2)}), tmp_path / "d")
    siglip_parts = build_parts(Case(True, "mlp", "gelu", False, -1, True, "siglip"))
    with pytest.raises(LlavaExportError, match="SigLIP tower's image_size is 32"):
        export_llava_hf(
            LlavaParts(**{**siglip_parts.__dict__, "image_processor": SiglipImageProcessorPil()}), tmp_path / "d"
        )
    with pytest.raises(LlavaExportError, match="must resize"):
        processor = SiglipImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=True)
        export_llava_hf(LlavaParts(**{**siglip_parts.__dict__, "image_processor": processor}), tmp_path / "d")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("")
    with pytest.raises(LlavaExportError, match="not empty"):
        export_llava_hf(parts, tmp_path / "e")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("vision_feature_layer", [-2, -1], "vision_feature_layer"),
        ("vision_feature_select_strategy", "cls", "vision_feature_select_strategy"),
        ("projector_hidden_act", "gelu_pytorch_tanh", "projector_hidden_act"),
        (
            "vision_config",
            {
                "model_type": "dinov2",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
            },
            "vision_config.model_type",
        ),
        (
            "vision_config",
            {
                "model_type": "siglip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
            },
            "'default' with a SigLIP tower, which has no CLS token",  # the exported strategy is 'default'
        ),
    ],
)
def test_import_rejects_what_vlmplug_cannot_represent(tmp_path: Path, field: str, value: Any, match: str) -> None:
    parts = build_parts(Case(True, "mlp", "gelu", True, -2, True))
    out = export_llava_hf(parts, tmp_path / "llava")
    config = json.loads((out / "config.json").read_text())
    config[field] = value
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(LlavaExportError, match=match):
        import_llava_hf(out)


def test_import_rejects_processor_mismatch(tmp_path: Path) -> None:
    parts = build_parts(Case(True, "mlp", "gelu", True, -2, True))
    out = export_llava_hf(parts, tmp_path / "llava")
    proc = json.loads((out / "processor_config.json").read_text())
    proc["num_additional_image_tokens"] = 0
    (out / "processor_config.json").write_text(json.dumps(proc))
    with pytest.raises(LlavaExportError, match="num_additional_image_tokens"):
        import_llava_hf(out)


# ----------------------------------------------------------------------------------------------
# SigLIP towers and towers run at another resolution, against vlmplug's own modules
# ----------------------------------------------------------------------------------------------


def _own_vlm(parts: LlavaParts, tower: Any) -> Any:
    from vlmplug.plugins.connectors._projectors import Projector
    from vlmplug.plugins.fusion._interleaved import InterleavedVLM

    connector = Projector(connector_from_parts(parts).proj, tower.num_patches)
    return InterleavedVLM(tower, connector, parts.llm, parts.image_token_id).eval()


@pytest.mark.parametrize("resolution", [None, 48, 44], ids=["native", "48px", "44px-floor"])
@pytest.mark.parametrize("tower_name", ["clip", "siglip"])
def test_vlmplug_towers_at_a_resolution_export_exactly(tmp_path: Path, tower_name: str, resolution: int | None) -> None:
    """vlmplug's ClipVisionTower / SiglipVisionTower (at ``image_resolution``: interpolated position
    embeddings) + Projector + InterleavedVLM give the logits and generations of the LLaVA-HF export,
    whose tower carries the interpolated table at that size; the processor gives vlmplug's pixels."""
    from vlmplug.plugins.encoders._clip import ClipVisionTower
    from vlmplug.plugins.encoders._siglip import SiglipVisionTower
    from vlmplug.plugins.interop._llava_convert import vision_model_at_resolution

    siglip = tower_name == "siglip"
    parts = build_parts(Case(True, "mlp", "gelu", not siglip, -2, False, tower_name))
    if siglip:
        tower = SiglipVisionTower(parts.vision_model, parts.image_processor, -2, None, image_resolution=resolution)
    else:
        tower = ClipVisionTower(parts.vision_model, parts.image_processor, -2, True, None, image_resolution=resolution)
    size = resolution or IMAGE_SIZE
    native = vision_model_at_resolution(tower.model, tower.image_size)
    assert (native is tower.model) == (size == IMAGE_SIZE)
    assert native.config.image_size == size and tower.model.config.image_size == IMAGE_SIZE  # the tower is untouched
    exported = LlavaParts(**{**parts.__dict__, "vision_model": native, "image_processor": tower.image_processor})
    assert exported.tokens_per_image == tower.num_patches == (size // PATCH) ** 2
    model, _, processor = load_exported(export_llava_hf(exported, tmp_path / "llava"))
    assert model.config.vision_config.image_size == size

    prompt = parts.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=IMAGES, text=prompt, return_tensors="pt")
    pixels = tower.preprocess(IMAGES)
    assert pixels.shape == (2, 3, size, size)
    assert torch.allclose(pixels, inputs["pixel_values"], atol=1e-5, rtol=0)
    vlm = _own_vlm(parts, tower)
    with torch.no_grad():
        ref = vlm(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]).logits
        logits = model(**inputs).logits[..., : ref.shape[-1]]
        assert torch.allclose(logits, ref, atol=ATOL, rtol=0), (logits - ref).abs().max()
        ours = vlm.generate(
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["pixel_values"],
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    theirs = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert ours.tolist() == theirs.tolist()

    # imported back: a tower native at that size computes the same features without interpolation
    back = import_llava_hf(tmp_path / "llava")
    assert back.vision_model.config.image_size == size
    cls = SiglipVisionTower if siglip else ClipVisionTower
    extra = () if siglip else (True,)
    plain = cls(back.vision_model, back.image_processor, back.feature_layer, *extra, None)  # type: ignore[call-arg]
    with torch.no_grad():
        assert torch.allclose(plain(pixels), tower(pixels), atol=1e-6, rtol=0)


def test_import_of_a_foreign_llava_siglip_checkpoint(tmp_path: Path) -> None:
    """A LLaVA-HF checkpoint with a SigLIP tower written by transformers itself (attention-pooling head
    included, as SiglipVisionConfig defaults): imported parts compose to its logits."""
    from transformers import (
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    torch.manual_seed(6)
    tokenizer = build_tokenizer(image_in_vocab=True)
    config = LlavaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=VISION_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
        ),
        text_config=LlamaConfig(
            hidden_size=TEXT_HIDDEN,
            intermediate_size=96,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            initializer_range=0.2,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path / "foreign")
    LlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="full",
        image_token=IMAGE,
        num_additional_image_tokens=0,
    ).save_pretrained(tmp_path / "foreign")

    parts = import_llava_hf(tmp_path / "foreign")
    assert (parts.feature_layer, parts.drop_cls, parts.tokens_per_image) == (-1, False, (IMAGE_SIZE // PATCH) ** 2)
    processor = LlavaProcessor.from_pretrained(tmp_path / "foreign")
    inputs = processor(images=IMAGES, text=f"{IMAGE} and {IMAGE} what colour", return_tensors="pt")
    assert int((inputs["input_ids"] == parts.image_token_id).sum()) == 2 * parts.tokens_per_image
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.allclose(vlmplug_logits(parts, inputs), expected, atol=ATOL, rtol=0)
    assert_state_equal(parts.vision_model.state_dict(), model.model.vision_tower.state_dict())

    # a processor that counts an extra (CLS) token for a SigLIP tower is refused
    proc = json.loads((tmp_path / "foreign" / "processor_config.json").read_text())
    proc["num_additional_image_tokens"] = 1
    (tmp_path / "foreign" / "processor_config.json").write_text(json.dumps(proc))
    with pytest.raises(LlavaExportError, match="SigLIP tower adds none"):
        import_llava_hf(tmp_path / "foreign")
