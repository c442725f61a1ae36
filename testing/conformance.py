"""The family conformance suites: what every component of a family must do, checked on tiny parts.

:func:`check_component` builds the component from its spec with its ``test_options`` (tiny and
offline), the way a run builds it, and checks:

* **all families** -- the config dataclass round-trips (defaults -> dict -> config), every option
  has help text, the light plugin module imports no torch, the built object has every member of its
  family contract (:mod:`vlmplug.contracts`);
* **vision encoder** -- ``preprocess`` gives ``float32 [B, 3, S, S]`` for images of any size;
  ``forward`` gives finite ``[B, num_patches, hidden_size]``; save -> load gives identical features;
* **connector** -- ``[B, N, D] -> [B, num_tokens, H]`` for several batch sizes (the declared token
  budget is honoured), gradients reach every parameter; save -> load gives identical outputs;
* **fusion** -- the assembled model meets the model contract; logits ``[B, L, V]``; the loss with
  ``num_items_in_batch`` is the token sum over it, so two micro-batches add up to the whole batch;
  ``generate`` returns ``[B, new]`` token ids; save -> ``vlmplug.load`` gives identical logits;
* **PEFT method** -- ``apply`` leaves something to train and something (or nothing) frozen as it
  says; ``save_llm`` -> ``load_llm`` and ``merge`` keep the logits;
* **dataset format** -- samples are canonical (roles, string contents, one ``<image>`` per image);
* **optimizer stack** -- ``update_training_args`` returns arguments transformers accepts;
  ``patch_model`` keeps the model working; ``create_optimizer`` returns an optimizer or ``None``;
* **evaluator** -- ``score`` of its own references is JSON-serialisable, has the primary metric as a
  float and one score per record; ``parse`` and ``prompt`` return what the pipeline expects.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmplug.contracts import missing_members

from . import tiny

__all__ = ["check_component", "check_combination", "check_config", "check_light_module"]

GREEN = (40, 170, 60)


def _options(spec: Any, tmp: Path) -> dict[str, Any]:
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            if "{messages_jsonl}" in value:
                value = value.replace("{messages_jsonl}", str(_messages_jsonl(tmp)))
            if "{llava_json}" in value:
                value = value.replace("{llava_json}", str(_llava_json(tmp)))
            if "{caption_json}" in value:
                value = value.replace("{caption_json}", str(_caption_json(tmp)))
            if "{hf_parquet}" in value:
                value = value.replace("{hf_parquet}", str(_hf_parquet(tmp)))
            for name, writer in _WRITERS.items():
                if "{" + name + "}" in value:
                    value = value.replace("{" + name + "}", str(writer(tmp)))
            return value.replace("{tmp}", str(tmp))
        return value

    return {k: fill(v) for k, v in spec.test_options.items()}


def _llava_json(tmp: Path) -> Path:
    """The rows of :func:`_messages_jsonl` in LLaVA-Instruct's layout (one JSON list)."""
    path = tmp / "conformance_llava.json"
    if not path.exists():
        names = {"user": "human", "assistant": "gpt", "system": "system"}
        rows = []
        for line in _messages_jsonl(tmp).read_text().splitlines():
            row = json.loads(line)
            turns = [{"from": names[m["role"]], "value": m["content"]} for m in row.pop("messages")]
            images = row.pop("images", [])
            rows.append({**row, "conversations": turns, **({"image": images[0]} if images else {})})
        path.write_text(json.dumps(rows))
    return path


def _caption_json(tmp: Path) -> Path:
    """A COCO captions file (``captions_train2017.json``'s layout): two images, three captions."""
    path = tmp / "conformance_captions.json"
    if not path.exists():
        from PIL import Image

        Image.new("RGB", (40, 30), GREEN).save(tmp / "green.png")
        Image.new("RGB", (24, 48), (200, 30, 30)).save(tmp / "red.png")
        data = {
            "images": [{"id": 1, "file_name": "green.png"}, {"id": 2, "file_name": "red.png"}],
            "annotations": [
                {"id": 10, "image_id": 1, "caption": "A green rectangle."},
                {"id": 11, "image_id": 1, "caption": "Green, nothing else."},
                {"id": 12, "image_id": 2, "caption": "A tall red picture."},
            ],
        }
        path.write_text(json.dumps(data))
    return path


def _hf_parquet(tmp: Path) -> Path:
    """The rows of :func:`_messages_jsonl` as a parquet file with an embedded ``datasets.Image`` column."""
    path = tmp / "conformance.parquet"
    if not path.exists():
        import datasets

        rows = []
        for line in _messages_jsonl(tmp).read_text().splitlines():
            row = json.loads(line)
            images = [{"bytes": (tmp / name).read_bytes(), "path": None} for name in row.get("images", [])]
            rows.append({"messages": row["messages"], "images": images})
        turn = {"role": datasets.Value("string"), "content": datasets.Value("string")}
        features = datasets.Features({"messages": [turn], "images": [datasets.Image()]})
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def _vqav2(tmp: Path) -> tuple[Path, Path]:
    """VQAv2's two files (questions, annotations) for two questions about one COCO-named image."""
    questions, annotations = tmp / "v2_OpenEnded_mscoco_train2014_questions.json", tmp / "v2_annotations.json"
    if not questions.exists():
        from PIL import Image

        Image.new("RGB", (40, 30), GREEN).save(tmp / "COCO_train2014_000000000001.jpg")
        asked = [("What color is the picture?", "green"), ("Is it red?", "no")]
        qs = [{"image_id": 1, "question": q, "question_id": 10 + i} for i, (q, _) in enumerate(asked)]
        anns = [
            {"question_id": 10 + i, "image_id": 1, "answers": [{"answer": a, "answer_id": 1}], "question_type": "what"}
            for i, (_, a) in enumerate(asked)
        ]
        questions.write_text(json.dumps({"questions": qs}))
        annotations.write_text(json.dumps({"annotations": anns}))
    return questions, annotations


def _video_jsonl(tmp: Path) -> Path:
    """A video QA row (four frame files) and a caption row (the same frames with an fps)."""
    path = tmp / "conformance_video.jsonl"
    if not path.exists():
        from PIL import Image

        frames = [f"frame{i}.png" for i in range(4)]
        for i, name in enumerate(frames):
            Image.new("RGB", (32, 32), (60 * i, 170, 60)).save(tmp / name)
        rows = [
            {"video": frames, "question": "What color is the video?", "answer": "green"},
            {"video": {"frames": frames, "fps": 2}, "caption": "A green screen that brightens."},
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _document_json(tmp: Path) -> Path:
    """DocVQA's layout ({data: [{questionId, question, image, answers}]}) with one page image."""
    path = tmp / "conformance_docvqa.json"
    if not path.exists():
        from PIL import Image, ImageDraw

        (tmp / "documents").mkdir(exist_ok=True)
        page = Image.new("RGB", (48, 64), (255, 255, 255))
        ImageDraw.Draw(page).rectangle((8, 8, 40, 16), fill=(0, 0, 0))
        page.save(tmp / "documents" / "page_1.png")
        row = {"questionId": 1, "question": "What is the title?", "image": "documents/page_1.png", "answers": ["Bar"]}
        path.write_text(json.dumps({"data": [row, {**row, "questionId": 2, "question": "Is it a form?"}]}))
    return path


_CHAT_STUB: list[str] = []


def _chat_stub_url(tmp: Path) -> str:
    """The API root (``.../v1``) of a local OpenAI-compatible chat-completions stub that answers "1.0" to
    everything (for an evaluator that asks a judge model); one per process."""
    if not _CHAT_STUB:
        from .chat_stub import ChatStub

        _CHAT_STUB.append(ChatStub(lambda request: "1.0").url)
    return _CHAT_STUB[0]


_WRITERS = {
    "chat_stub_url": _chat_stub_url,
    "vqav2_questions": lambda tmp: _vqav2(tmp)[0],
    "vqav2_annotations": lambda tmp: _vqav2(tmp)[1],
    "video_jsonl": _video_jsonl,
    "document_json": _document_json,
}


def _messages_jsonl(tmp: Path) -> Path:
    from PIL import Image

    path = tmp / "conformance.jsonl"
    if not path.exists():
        Image.new("RGB", (40, 30), GREEN).save(tmp / "green.png")
        rows = [
            {
                "messages": [
                    {"role": "user", "content": "<image>\nWhat color is the shape?"},
                    {"role": "assistant", "content": "green"},
                ],
                "images": ["green.png"],
            },
            {
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Say yes."},
                    {"role": "assistant", "content": "yes"},
                ]
            },
        ]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def check_config(spec: Any, options: Mapping[str, Any] | None = None) -> None:
    """Config (defaults + ``options``) -> dict -> config is the identity, and every option has help."""
    if spec.config is None:
        return
    config = spec.make_config(dict(options or {}))
    values = dataclasses.asdict(config)
    assert spec.make_config(values) == config, f"{spec.name}: config does not round-trip through a dict"
    json.dumps(values, default=str)
    for f in dataclasses.fields(spec.config):
        assert f.metadata.get("help"), f"{spec.name}: option '{f.name}' has no help (field metadata 'help')"


def check_light_module(module: str) -> None:
    """Importing the plugin module (what ``vlmplug list`` does) imports no torch, transformers or peft."""
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{module} does not import: {out.stderr[-2000:]}"
    assert not out.stdout.strip(), f"importing {module} pulls in {out.stdout.strip()}; import them lazily"


def _build(spec: Any, options: dict[str, Any], ctx: Any, **kwargs: Any) -> Any:
    obj = tiny.build(spec, ctx, options, **kwargs)
    missing = missing_members(obj, spec.family)
    assert not missing, f"{spec.name}: missing {spec.family} contract members: {', '.join(missing)}"
    return obj


def _images() -> list[Any]:
    from PIL import Image

    return [Image.new("RGB", (40, 30), GREEN), Image.new("RGB", (24, 48), (200, 30, 30))]


def _state_round_trip(module: Any, rebuild: Any, tmp: Path) -> Any:
    """Save ``module``'s weights with safetensors, load them into ``rebuild()``, return the new one."""
    from safetensors.torch import load_file, save_file

    from vlmplug.train.vlm import unique_tensors

    save_file(unique_tensors(module.state_dict()), str(tmp / "weights.safetensors"))
    other = rebuild()
    other.load_state_dict(load_file(str(tmp / "weights.safetensors")), strict=False)
    return other


def _check_vision_encoder(spec: Any, options: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import torch

    ctx = tiny.make_ctx()
    torch.manual_seed(0)
    tower = _build(spec, options, ctx)
    pixels = tower.preprocess(_images())
    # one row per image; beyond that only the tower reads pixel_values ([2, 3, S, S] for a ViT)
    assert pixels.dtype == torch.float32 and pixels.shape[0] == 2, (pixels.dtype, pixels.shape)
    with torch.no_grad():
        feats = tower(pixels)
    assert tuple(feats.shape) == (2, tower.num_patches, tower.hidden_size), (feats.shape, tower.num_patches)
    assert torch.isfinite(feats).all()
    torch.manual_seed(1)
    other = _state_round_trip(tower, lambda: tiny.build(spec, ctx, options), tmp)
    with torch.no_grad():
        assert torch.equal(other(pixels), feats), "save -> load changed the features"
    return {"num_patches": tower.num_patches, "hidden_size": tower.hidden_size}


def _check_connector(spec: Any, options: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import torch

    ctx = tiny.make_ctx()
    d, h, n, vocab = 16, 24, 16, 40
    text = tiny._needs(spec, options, "instruction")
    extra = {"vocab_size": vocab} if text else {}
    torch.manual_seed(0)
    conn = _build(spec, options, ctx, in_dim=d, out_dim=h, num_input_tokens=n, **extra)

    def call(module: Any, x: Any) -> Any:
        if not text:
            return module(x)
        ids = torch.arange(x.shape[0] * 5).reshape(x.shape[0], 5) % vocab
        return module(x, instruction_ids=ids, instruction_mask=torch.ones_like(ids))

    for b in (1, 3):
        out = call(conn, torch.randn(b, n, d))
        assert tuple(out.shape) == (b, conn.num_tokens, h), (
            f"{spec.name}: output {tuple(out.shape)} for declared budget {conn.num_tokens}"
        )
    out.sum().backward()
    assert all(p.grad is not None for p in conn.parameters() if p.requires_grad), "a parameter gets no gradient"
    x = torch.randn(2, n, d)
    other = _state_round_trip(
        conn, lambda: tiny.build(spec, ctx, options, in_dim=d, out_dim=h, num_input_tokens=n, **extra), tmp
    )
    conn.eval()
    other.eval()
    with torch.no_grad():
        assert torch.equal(call(other, x), call(conn, x)), "save -> load changed the outputs"
    return {"num_tokens": conn.num_tokens}


def _check_fusion(spec: Any, options: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import torch

    tok = tiny.make_tokenizer()
    ctx = tiny.make_ctx()
    fusion = _build(spec, options, ctx)
    vlm = tiny.make_vlm(tok, ctx, fusion=spec, fusion_options=options)
    missing = missing_members(vlm, "model")
    assert not missing, f"{spec.name}: the built model misses {', '.join(missing)}"
    placeholders = fusion.placeholder_tokens(vlm.connector)
    assert isinstance(placeholders, int) and placeholders >= 0
    batch = tiny.make_batch(vlm, tok, (1, 2), seed=1)
    vlm.eval()
    with torch.no_grad():
        out = vlm(**batch)
        assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.loss)
        n = int((batch["labels"][:, 1:] != -100).sum())
        halves = [{k: v[i : i + 1] for k, v in batch.items() if k != "pixel_values"} for i in range(2)]
        per_row = [1, 2]
        offsets = [0, 1]
        total = 0.0
        for i, half in enumerate(halves):
            half["pixel_values"] = batch["pixel_values"][offsets[i] : offsets[i] + per_row[i]]
            total += float(vlm(**half, num_items_in_batch=n).loss)
    assert abs(total - float(out.loss)) < 1e-4 * max(1.0, abs(float(out.loss))), (
        f"{spec.name}: micro-batch losses with num_items_in_batch sum to {total}, the whole batch gives {out.loss}"
    )
    gen = vlm.generate(
        batch["input_ids"][:1],
        batch["attention_mask"][:1],
        batch["pixel_values"][:1],
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=None,
    )
    assert gen.dtype == torch.long and gen.shape == (1, 3), gen.shape
    _check_reload(vlm, batch, tmp, spec)
    return {"placeholder_tokens": placeholders}


def _prepare_for_save(vlm: Any, spec_by_family: Mapping[str, Any]) -> None:
    """Give a hand-built tiny model the manifest a run would give it."""
    from vlmplug.recipe import Selection
    from vlmplug.train.assemble import model_manifest

    core = {
        "model": "tiny-llama",
        "model_config": dict(tiny.LLM_OVERRIDES),
        "dtype": "float32",
        "attn_implementation": "eager",
        "image_token": tiny.IMAGE_TOKEN,
        "trust_remote_code": False,
    }
    single = {fam: Selection(spec=s, options=opts) for fam, (s, opts) in spec_by_family.items()}
    vlm.manifest = model_manifest(single, core, True, vlm.tokens_per_image)


def _check_reload(
    vlm: Any,
    batch: dict[str, Any],
    tmp: Path,
    fusion_spec: Any = None,
    peft: tuple | None = None,
    families: dict[str, tuple[Any, dict[str, Any]]] | None = None,
) -> None:
    """Save the model, ``vlmplug.load`` it, and compare logits (default parts: tiny CLIP -> mlp)."""
    import torch

    import vlmplug
    from vlmplug.manager import load

    host = load()
    reg = host.registry
    clip = reg.get("clip")
    families = dict(families or {})
    families.setdefault("vision_encoder", (clip, dict(clip.test_options)))
    families.setdefault("connector", (reg.get("mlp"), {}))
    if fusion_spec is not None:
        families["fusion"] = (fusion_spec, dict(fusion_spec.test_options))
    if peft is not None:
        families["peft"] = peft
    _prepare_for_save(vlm, families)
    vlm.save_pretrained(tmp / "model")
    loaded = vlmplug.load(tmp / "model", host=host)
    vlm.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, vlm(**batch).logits, rtol=1e-5, atol=1e-5)


def check_combination(encoder: Any, connector: Any, fusion: Any) -> dict[str, Any]:
    """One encoder x connector x fusion around the tiny LLM (each with its ``test_options``): forward
    with finite loss and ``[B, L, V]`` logits, gradients into the connector, ``generate``, and save ->
    ``vlmplug.load`` with identical logits."""
    import torch

    tok = tiny.make_tokenizer()
    vlm = tiny.make_vlm(tok, tiny.make_ctx(), encoder=encoder, connector=connector, fusion=fusion)
    batch = tiny.make_batch(vlm, tok, (1, 2), seed=1)
    vlm.train()
    out = vlm(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vlm.connector.parameters()), (
        "no gradient reaches the connector"
    )
    vlm.eval()
    keep = ("input_ids", "attention_mask", "pixel_values", "instruction_ids", "instruction_mask")
    first = {k: v[:1] if k in ("input_ids", "attention_mask") else v for k, v in batch.items() if k in keep}
    n_first = int((batch["input_ids"][0] == vlm.image_token_id).sum()) // max(vlm.tokens_per_image, 1)
    for k in ("pixel_values", "instruction_ids", "instruction_mask"):
        if k in first:
            first[k] = first[k][:n_first]
    gen = vlm.generate(**first, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
    assert gen.dtype == torch.long and gen.shape == (1, 3), gen.shape
    families = {
        fam: (spec, dict(spec.test_options))
        for fam, spec in (("vision_encoder", encoder), ("connector", connector), ("fusion", fusion))
    }
    with tempfile.TemporaryDirectory(prefix="vlmplug-combination-") as tmp:
        _check_reload(vlm, batch, Path(tmp), families=families)
    return {"tokens_per_image": vlm.tokens_per_image}


def _check_peft(spec: Any, options: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import torch

    tok = tiny.make_tokenizer()
    ctx = tiny.make_ctx()
    method = _build(spec, options, ctx)
    assert isinstance(method.model_load_kwargs(), dict)
    vlm = tiny.make_vlm(tok, ctx, llm_load_kwargs=method.model_load_kwargs())
    torch.manual_seed(3)
    vlm = method.apply(vlm)
    n_train = sum(p.numel() for p in vlm.parameters() if p.requires_grad)
    assert n_train > 0, f"{spec.name}: nothing trains after apply()"
    batch = tiny.make_batch(vlm, tok, (1, 1), seed=2)
    opt = torch.optim.SGD([p for p in vlm.parameters() if p.requires_grad], lr=0.5)
    vlm.train()
    vlm(**batch).loss.backward()
    opt.step()
    _check_reload(vlm, batch, tmp, vlmplug_registry_spec("interleaved"), peft=(spec, options))
    vlm.eval()
    with torch.no_grad():
        before = vlm(**batch).logits
        merged = method.merge(vlm)
        torch.testing.assert_close(merged(**batch).logits, before, rtol=1e-4, atol=1e-4)
    return {"trainable": n_train}


def vlmplug_registry_spec(name: str) -> Any:
    from vlmplug.manager import load

    return load(autoload=False).registry.get(name)


def _check_dataset_format(spec: Any, options: dict[str, Any], tmp: Path) -> dict[str, Any]:
    ds = _build(spec, options, tiny.make_ctx())
    assert len(ds) > 0, f"{spec.name}: no samples from its test_options"
    assert isinstance(ds.skipped, list)
    for i in range(min(len(ds), 4)):
        s = ds[i]
        msgs = s["messages"]
        assert isinstance(msgs, list) and msgs, f"sample {i}: messages"
        assert all(m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str) for m in msgs)
        n_placeholders = sum(m["content"].count("<image>") for m in msgs)
        assert n_placeholders == len(s.get("images") or []), (
            f"sample {i}: {n_placeholders} <image> for {len(s.get('images') or [])} images"
        )
    return {"samples": len(ds)}


def _check_optimizer_stack(spec: Any, options: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import torch
    from transformers import TrainingArguments

    ctx = tiny.make_ctx()
    comp = _build(spec, options, ctx)
    notes: list[str] = []
    args = comp.update_training_args(
        {"output_dir": str(tmp / "out"), "use_cpu": True, "report_to": "none"}, ctx.hardware, notes.append
    )
    targs = TrainingArguments(**{k: v for k, v in args.items() if v is not None})
    assert isinstance(comp.model_load_kwargs(), dict)
    tok = tiny.make_tokenizer()
    vlm = comp.patch_model(tiny.make_vlm(tok, ctx))
    batch = tiny.make_batch(vlm, tok, (1,))
    vlm.train()
    loss = vlm(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert callable(comp.wrap_collator(lambda rows: rows))
    opt = comp.create_optimizer(vlm, targs)
    assert opt is None or isinstance(opt, torch.optim.Optimizer)
    return {"notes": notes}


def _check_evaluator(spec: Any, options: dict[str, Any], tmp: Path) -> dict[str, Any]:
    ev = _build(spec, options, tiny.make_ctx())
    assert isinstance(ev.primary_metric, str) and ev.primary_metric
    # a yes/no question carrying the reference fields of every built-in evaluator's kind: answers
    # (VQA-style), label (POPE), options (multiple choice), captions
    sample = {
        "messages": [
            {"role": "user", "content": "<image>\nIs the shape green?"},
            {"role": "assistant", "content": "yes"},
        ],
        "images": [],
        "answers": ["yes"],
        "label": "yes",
        "options": {"A": "yes", "B": "no"},
        "captions": ["a green shape"],
    }
    variants = ev.variants(sample) if hasattr(ev, "variants") else [sample]
    assert isinstance(variants, list) and variants, f"{spec.name}: variants() must return a non-empty list"
    prompt = ev.prompt(variants[0])
    assert isinstance(prompt, list) and all({"role", "content"} <= set(m) for m in prompt)
    refs = ev.references(variants[0])
    json.dumps(refs)
    assert isinstance(ev.parse(" yes \n"), str)
    records = [{"prediction": ev.parse("yes"), **refs}, {"prediction": ev.parse("no"), **refs}]
    metrics, per_sample = ev.score(records)
    json.dumps(metrics)
    assert isinstance(metrics[ev.primary_metric], float), f"{spec.name}: primary metric must be a float"
    assert len(per_sample) == len(records)
    assert isinstance(ev.baselines([sample], records), dict)
    return {"primary_metric": ev.primary_metric}


SUITES = {
    "vision_encoder": _check_vision_encoder,
    "connector": _check_connector,
    "fusion": _check_fusion,
    "peft": _check_peft,
    "dataset_format": _check_dataset_format,
    "optimizer_stack": _check_optimizer_stack,
    "evaluator": _check_evaluator,
}


def check_component(spec: Any, *, module: str | None = None, host: Any = None) -> dict[str, Any]:
    """Run ``spec``'s family suite (see the module docstring); ``AssertionError`` names what failed.

    ``spec`` may come straight from a plugin module (its family is then looked up by name).
    ``module``: the light plugin module to check for heavy imports (default: where the spec's
    config dataclass is defined)."""
    if not spec.family:
        from vlmplug.manager import load

        host = host or load()
        registered = host.registry.get(spec.name)
        assert registered is not None, f"{spec.name} is not registered by any installed plugin"
        spec = registered
    light = module or (spec.config.__module__ if spec.config is not None else None)
    if light:
        check_light_module(light)
    with tempfile.TemporaryDirectory(prefix="vlmplug-conformance-") as tmp:
        options = _options(spec, Path(tmp))
        check_config(spec, options)
        details = SUITES[spec.family](spec, options, Path(tmp))
    return {"name": spec.name, "family": spec.family, **details}
