"""Tiny random-init parts for tests: built from configs, nothing is downloaded.

A CLIP tower at 32 px with 8 px patches (16 patch tokens of width 32), a 1-layer Llama of width 32
and a SentencePiece-style BPE tokenizer trained on a handful of sentences. Components are built the
way the training pipeline builds them: ``spec.load_factory()(spec.make_config(options), ctx, ...)``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from vlmplug.train.hardware import Hardware
from vlmplug.train.run import BuildContext

__all__ = [
    "random_images",
    "write_video",
    "IMAGE_TOKEN",
    "TINY_TEXTS",
    "CLIP_OPTIONS",
    "LLM_OVERRIDES",
    "make_ctx",
    "build",
    "make_tokenizer",
    "make_clip",
    "make_llm",
    "make_connector",
    "make_vlm",
    "make_batch",
    "namespace",
]

IMAGE_TOKEN = "<image>"
TINY_TEXTS = [
    "What color is the shape?",
    "Which color does the shape have?",
    "What shape is this?",
    "How many shapes are there?",
    "Is there a red shape?",
    "Does the image contain a circle?",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "circle",
    "square",
    "triangle",
    "yes",
    "no",
    "1",
    "2",
    "3",
    "You are a helpful assistant.",
    "Describe the image in one word.",
]

CLIP_OPTIONS: dict[str, Any] = dict(
    model="tiny", tiny_image_size=32, tiny_patch_size=8, tiny_hidden_size=32, tiny_layers=2, tiny_heads=2
)
LLM_OVERRIDES: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def make_ctx(on_bad_sample: str = "error", hardware: Hardware | None = None) -> BuildContext:
    return BuildContext(
        recipe=None,
        torch_dtype=torch.float32,
        hub_kwargs={},
        on_bad_sample=on_bad_sample,
        hardware=hardware or Hardware(False, "cpu", False, False),
    )


def build(spec: Any, ctx: Any, options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Build a component from its spec, as the pipeline does (config from ``options`` + defaults)."""
    return spec.load_factory()(spec.make_config(options or {}), ctx, **kwargs)


def make_tokenizer(texts: list[str] | None = None, vocab_size: int = 300) -> Any:
    from vlmplug.train.llm import build_tiny_tokenizer

    return build_tiny_tokenizer(texts or TINY_TEXTS, IMAGE_TOKEN, vocab_size=vocab_size)


def make_clip(ctx: Any, seed: int = 0, **options: Any) -> Any:
    from vlmplug.plugins.encoders.clip import SPEC

    torch.manual_seed(seed)
    return build(SPEC, ctx, {**CLIP_OPTIONS, **options})


def make_llm(tokenizer: Any, seed: int = 0, **overrides: Any) -> Any:
    from vlmplug.train.llm import load_llm

    torch.manual_seed(seed)
    llm, from_preset = load_llm(
        "tiny-llama",
        tokenizer,
        dtype=torch.float32,
        overrides={**LLM_OVERRIDES, **overrides},
        load_kwargs={},
        hub_kwargs={},
        attn_implementation="eager",
    )
    assert from_preset
    return llm


def _spec(name_or_spec: Any) -> Any:
    if not isinstance(name_or_spec, str):
        return name_or_spec
    from vlmplug.manager import load

    spec = load().registry.get(name_or_spec)
    if spec is None:
        raise KeyError(f"no installed component '{name_or_spec}'")
    return spec


def _needs(spec: Any, options: dict[str, Any] | None, capability: str) -> bool:
    config = spec.make_config(dict(options or {})) if spec.config is not None else None
    return capability in spec.needs_and_offers(config)[0]


def make_connector(
    spec: Any,
    ctx: Any,
    tower: Any,
    llm: Any,
    options: dict[str, Any] | None = None,
    seed: int = 2,
    vocab_size: int | None = None,
) -> Any:
    """Build a connector for ``tower`` -> ``llm`` (``vocab_size`` for text-conditioned ones)."""
    torch.manual_seed(seed)
    hidden = llm.get_input_embeddings().weight.shape[1]
    options = {**spec.test_options, **(options or {})}
    extra = {"vocab_size": vocab_size} if _needs(spec, options, "instruction") else {}
    return build(
        spec, ctx, options, in_dim=tower.hidden_size, out_dim=hidden, num_input_tokens=tower.num_patches, **extra
    )


def make_vlm(
    tokenizer: Any,
    ctx: Any,
    *,
    seed: int = 0,
    encoder: Any = "clip",
    encoder_options: dict[str, Any] | None = None,
    connector: Any = "mlp",
    connector_options: dict[str, Any] | None = None,
    fusion: Any = "interleaved",
    fusion_options: dict[str, Any] | None = None,
    llm_load_kwargs: dict[str, Any] | None = None,
) -> Any:
    """A tiny encoder -> connector -> fusion into the tiny Llama; no PEFT applied yet.
    ``llm_load_kwargs`` (a PEFT method's ``model_load_kwargs()``, e.g. a quantization config): the LLM
    goes through ``from_pretrained`` with them, as a run loads it.

    ``encoder``, ``connector`` and ``fusion`` are component specs or installed names; each is built
    with its ``test_options`` (tiny, offline) updated by the ``*_options`` given. The default is tiny
    CLIP -> mlp -> interleaved."""
    enc_spec, conn_spec, fusion_spec = _spec(encoder), _spec(connector), _spec(fusion)
    torch.manual_seed(seed)
    if enc_spec.name == "clip" and not encoder_options:
        tower = make_clip(ctx, seed=seed)
    else:
        tower = build(enc_spec, ctx, {**enc_spec.test_options, **(encoder_options or {})})
    llm = make_llm(tokenizer, seed=seed + 1)
    if llm_load_kwargs:
        from vlmplug.train.llm import reload_llm

        llm = reload_llm(llm, llm_load_kwargs, torch.float32)
    conn = make_connector(conn_spec, ctx, tower, llm, connector_options, seed=seed + 2, vocab_size=len(tokenizer))
    fusion_obj = build(fusion_spec, ctx, {**fusion_spec.test_options, **(fusion_options or {})})
    torch.manual_seed(seed + 3)
    vlm = fusion_obj.build(
        llm=llm, vision_encoder=tower, connector=conn, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    )
    vlm.manifest = {"components": {}, "save_llm_base": True, "model": "tiny-llama"}
    vlm.tokenizer = tokenizer
    vlm.fusion = fusion_obj
    vlm.tokens_per_image = fusion_obj.placeholder_tokens(conn)
    vlm.needs_instruction = _needs(conn_spec, {**conn_spec.test_options, **(connector_options or {})}, "instruction")
    return vlm


def random_images(n: int, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((40, 30), (24, 48))) -> list[Any]:
    """``n`` RGB PIL images of random pixels and varied sizes."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        out.append(Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()))
    return out


def make_batch(
    vlm: Any, tokenizer: Any, n_images_per_row: tuple[int, ...] = (1, 1), text_len: int = 5, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Right-padded rows of ``[text, <image> x T, ..., text]``: random ordinary-token ids (never a
    special token or the image token), random images through the tower's own preprocessing, labels
    on the text only; plus each image's instruction ids when the connector is text-conditioned."""
    from vlmplug.train.data import pad_instructions
    from vlmplug.train.llm import TINY_SPECIALS

    g = torch.Generator().manual_seed(seed)
    t = getattr(vlm, "tokens_per_image", None) or vlm.connector.num_tokens
    first_ordinary = len(TINY_SPECIALS) + 1  # the tiny vocab starts with its specials and the image token
    rows, instructions = [], []
    for n in n_images_per_row:
        ids: list[int] = []
        for _ in range(n):
            text = torch.randint(first_ordinary, len(tokenizer), (text_len,), generator=g).tolist()
            ids += text + [vlm.image_token_id] * t
            instructions.append(text)
        ids += torch.randint(first_ordinary, len(tokenizer), (text_len,), generator=g).tolist()
        rows.append(ids)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    labels = input_ids.clone()
    labels[(input_ids == vlm.image_token_id) | (mask == 0)] = -100
    n_images = sum(n_images_per_row)
    batch = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
        "pixel_values": vlm.vision_encoder.preprocess(random_images(n_images, seed)) if n_images else None,
    }
    if getattr(vlm, "needs_instruction", False) and instructions:
        batch["instruction_ids"], batch["instruction_mask"] = pad_instructions(instructions, tokenizer.pad_token_id)
    return batch


def namespace() -> SimpleNamespace:
    """The builders as one object (the ``tiny`` fixture)."""
    return SimpleNamespace(
        make_ctx=make_ctx,
        build=build,
        make_clip=make_clip,
        make_llm=make_llm,
        make_connector=make_connector,
        make_vlm=make_vlm,
        make_batch=make_batch,
        random_images=random_images,
        make_tokenizer=make_tokenizer,
        IMAGE_TOKEN=IMAGE_TOKEN,
        CLIP_OPTIONS=CLIP_OPTIONS,
        LLM_OVERRIDES=LLM_OVERRIDES,
    )


def write_video(path: Any, n: int = 24, fps: int = 10, size: int = 32, step: int = 10) -> str:
    """A real MPEG-4 file (PyAV) whose frame ``i`` is a flat grey of level ``step * i``; returns its path."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), step * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)
