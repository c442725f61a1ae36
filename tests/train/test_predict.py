"""The Predictor (shared by ``vlmplug eval``, ``chat`` and ``serve``): a saved model answers exactly as
the model's own ``generate`` does; streaming yields the same text; stop strings cut where the unstopped
answer has them; sampling is reproducible with a seed; bad values and bad input are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmplug.errors import ConfigError, DataError
from vlmplug.train.predict import Predictor, Sampling


@pytest.fixture(scope="module")
def predictor(saved_run: Path) -> Predictor:
    return Predictor.load(str(saved_run))


def _sample(color: tuple[int, int, int] = (255, 0, 0), question: str = "What color is the shape?") -> dict:
    return {
        "messages": [{"role": "user", "content": f"<image>\n{question}"}],
        "images": [Image.new("RGB", (32, 32), color)],
    }


def test_loads_a_run_directory_and_its_model_folder(saved_run: Path, predictor: Predictor) -> None:
    assert predictor.name == saved_run.name
    assert Predictor.load(str(saved_run / "model")).name == saved_run.name
    assert not predictor.vlm.training


def test_greedy_answers_equal_the_models_own_generate(predictor: Predictor) -> None:
    samples = [
        _sample(),
        _sample((0, 0, 255), "How many shapes are there?"),
        {"messages": [{"role": "user", "content": "hi"}]},
    ]
    prepared = [predictor.prepare(s) for s in samples]
    got = predictor.complete(prepared, Sampling(max_new_tokens=6))
    tok = predictor.tokenizer
    for p, c in zip(prepared, got):  # one at a time, no padding: the reference
        ids = torch.tensor([p.ids])
        pixels = predictor.preprocess(p.images) if p.images else None
        with torch.no_grad():
            out = predictor.vlm.generate(
                ids, torch.ones_like(ids), pixels, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
            )
        assert c.text == tok.decode(out[0], skip_special_tokens=True)
        assert c.prompt_tokens == len(p.ids)
    assert any(c.text for c in got)  # the trained model answers in words


def test_streaming_yields_the_same_text(predictor: Predictor) -> None:
    p = predictor.prepare(_sample())
    for sampling in (Sampling(max_new_tokens=6), Sampling(max_new_tokens=12, temperature=1.5, seed=3)):
        pieces = list(predictor.stream(p, sampling))
        whole = predictor.complete([p], sampling)[0]
        assert "".join(pieces) == whole.text == predictor.last_completion.text
        assert predictor.last_completion.finish_reason == whole.finish_reason


def _long_sampled(predictor: Predictor, p) -> tuple[Sampling, str]:
    for seed in range(20):
        sampling = Sampling(max_new_tokens=12, temperature=2.0, seed=seed)
        text = predictor.complete([p], sampling)[0].text
        if len(text.split()) >= 3:
            return sampling, text
    raise AssertionError("no multi-word sample in 20 seeds")


def test_stop_strings_cut_where_the_unstopped_answer_has_them(predictor: Predictor) -> None:
    p = predictor.prepare(_sample())
    sampling, text = _long_sampled(predictor, p)
    stop = text.split()[1]
    cut = text[: text.find(stop)]
    stopped = Sampling(max_new_tokens=12, temperature=2.0, seed=sampling.seed, stop=(stop,))
    done = predictor.complete([p], stopped)[0]
    assert done.text == cut and done.finish_reason == "stop"
    assert "".join(predictor.stream(p, stopped)) == cut


def test_sampling_is_reproducible_with_a_seed_and_length_is_reported(predictor: Predictor) -> None:
    p = predictor.prepare(_sample())
    sampling, text = _long_sampled(predictor, p)
    assert predictor.complete([p], sampling)[0].text == text
    short = predictor.complete([p], Sampling(max_new_tokens=1, temperature=2.0, seed=sampling.seed))[0]
    assert short.completion_tokens <= 1
    if short.completion_tokens == 1:
        assert short.finish_reason == "length"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens 0: must be at least 1"),
        ({"temperature": -1.0}, "temperature -1.0: must be 0"),
        ({"top_p": 0.0}, r"top_p 0.0: must be in \(0, 1\]"),
    ],
)
def test_bad_sampling_values_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Sampling(**kwargs)


def test_an_image_count_mismatch_names_the_request(predictor: Predictor) -> None:
    bad = {**_sample(), "images": [], "_where": "request 7"}
    with pytest.raises(DataError, match=r"request 7: 1 '<image>' placeholder\(s\) in the text but 0 image"):
        predictor.prepare(bad)


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no saved vlmplug model here"):
        Predictor.load(str(tmp_path))


def test_prompts_may_exceed_the_training_length_up_to_the_llms_positions(predictor: Predictor) -> None:
    trained = predictor.vlm.manifest["core"]["max_seq_length"]
    positions = predictor.vlm.llm.config.max_position_embeddings
    words = " ".join(["red"] * (trained + 8))
    prepared = predictor.prepare({"messages": [{"role": "user", "content": words}]})
    assert trained < len(prepared.ids) < positions
    assert predictor.complete([prepared], Sampling(max_new_tokens=2))[0].prompt_tokens == len(prepared.ids)
    with pytest.raises(DataError, match=f"exceed max_seq_length {positions}"):
        predictor.prepare({"messages": [{"role": "user", "content": " ".join(["red"] * positions)}]})
