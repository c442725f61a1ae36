"""The ``coco-caption`` evaluator: the PTB tokenizer, BLEU and CIDEr-D against hand-computed values and
numbers from pycocoevalcap 1.2, and the evaluator's prompting, references and record checks.

How the pycocoevalcap numbers were computed: ``pip install pycocoevalcap==1.2`` into a throwaway venv
(not the project's), then ``Bleu(4).compute_score(gts, res)`` and ``Cider().compute_score(gts, res)``
on the ``gts``/``res`` dicts written out below (already tokenised, no Java), and, for the raw-caption
corpus, first ``PTBTokenizer().tokenize`` (Java with the bundled stanford-corenlp-3.4.1.jar) on both.
The expected token lists of the tokenizer tests were also checked against that jar.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from vlmplug.plugins.evaluators import _caption_metrics as cm
from vlmplug.plugins.evaluators import caption as caption_plugin
from vlmplug.plugins.evaluators._caption import CaptionEvaluator

# -- tokenizer -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caption, tokens",
    [
        # lower-cased after tokenising: brackets become -lrb- ..., which the punctuation list keeps
        ("A (Red) Car [with] {braces}.", "a -lrb- red -rrb- car -lsb- with -rsb- -lcb- braces -rcb-"),
        # clitics split the PTB way, punctuation dropped
        ("The dog's toy isn't there, I'm sure they'll say.", "the dog 's toy is n't there i 'm sure they 'll say"),
        ("We can't go, won't stay; it’s fine.", "we ca n't go wo n't stay it 's fine"),
        ("You cannot go, we're gonna wait.", "you can not go we 're gon na wait"),
        # a closing possessive apostrophe is a quote (dropped)
        ("The dogs' bowls and James's hat.", "the dogs bowls and james 's hat"),
        # known abbreviations keep their period, other words lose it
        ("Mr. Smith, etc. near a dog.", "mr. smith etc. near a dog"),
        ("Page no. 5 and no. more.", "page no. 5 and no more"),
        ("The U.S. flag at 5 p.m. today, e.g. here.", "the u.s. flag at 5 p.m. today e.g. here"),
        # a single-letter initial before a sentence opener gives up its period
        ("the letter A. The end", "the letter a the end"),
        ("the letter A. the end", "the letter a. the end"),
        ("A sign.The end", "a sign.the end"),
        ("About 10,000 people wait 3.5 hours at 4:30.", "about 10,000 people wait 3.5 hours at 4:30"),
        # dashes of every kind dropped, five hyphens kept
        ("A t-shirt -- and - a ----- b … c — d", "a t-shirt and a ----- b c d"),
        # runs of ! and ? are kept as one token
        ("Wow!! Is it?! Yes! No?", "wow !! is it ?! yes no"),
        ("$5 for 50% off at A&W and AT&T, a&w.", "$ 5 for 50 % off at a&w and at&t a & w."),
        ('He said "hi" and ‘bye’ and `ok\' and „so“.', "he said hi and bye and ok and „ so"),
        ("£5 and €3 for ½ a cake.", "# 5 and $ 3 for 1/2 a cake"),
        ("A cat 😀 with a ♥.", "a cat with a ♥"),
        ("A dog., a cat; est.b here.", "a dog. a cat est. b here"),
        ("o'clock ma'am 'em y'all rock 'n' roll 'til", "o'clock ma'am 'em y' all rock 'n' roll 'til"),
        ("Two\nlines", "two lines"),
        ("", ""),
    ],
)
def test_tokenize_like_the_ptb_tokenizer(caption, tokens):
    assert cm.tokenize(caption) == tokens.split()


def test_batch_gives_the_next_caption_as_context():
    # the Java tokenizer reads the whole batch as one stream: "The" opening the next caption makes
    # the initial at the end of the first one lose its period
    assert cm.tokenize_batch(["the letter A.", "The end"]) == [["the", "letter", "a"], ["the", "end"]]
    assert cm.tokenize_batch(["the letter A.", "the end"]) == [["the", "letter", "a."], ["the", "end"]]
    assert cm.tokenize("the letter A.") == ["the", "letter", "a."]


def test_punctuation_list_is_pycocoevalcaps():
    assert {
        "''",
        "'",
        "``",
        "`",
        "-LRB-",
        "-RRB-",
        "-LCB-",
        "-RCB-",
        ".",
        "?",
        "!",
        ",",
        ":",
        "-",
        "--",
        "...",
        ";",
    } == (cm.PUNCTUATIONS)


# -- BLEU ------------------------------------------------------------------------------------------------


def _bleu(pairs: list[tuple[str, list[str]]]) -> list[float]:
    return cm.bleu([c.split() for c, _ in pairs], [[r.split() for r in refs] for _, refs in pairs])


def test_bleu_identical_caption_is_one():
    scores = _bleu([("a man riding a horse", ["a man riding a horse"])])
    # pycocoevalcap 1.2: the 1e-15 / 1e-9 constants keep it just below 1
    assert scores == pytest.approx([0.9999999996000004, 0.9999999995750004, 0.9999999995388893, 0.9999999994791672])
    assert all(s < 1.0 for s in scores)


def test_bleu_without_shared_ngram_is_tiny_not_zero():
    # precision (0 + 1e-15) / (3 + 1e-9); the brevity ratio (3 + 1e-15) / (3 + 1e-9) is a hair below 1
    bleu_1 = _bleu([("x y z", ["a b c"])])[0]
    assert bleu_1 == pytest.approx(1e-15 / 3, rel=1e-6)
    assert bleu_1 > 0


def test_bleu_missing_order_does_not_zero_bleu4():
    # p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 1e-15 / 1
    scores = _bleu([("a b c d", ["a b c x"])])
    assert scores[3] == pytest.approx((0.75 * 2 / 3 * 0.5 * 1e-15) ** 0.25, rel=1e-6)
    assert scores[3] == pytest.approx(1.2574334296829354e-4, rel=1e-6)


def test_bleu_brevity_penalty():
    # candidate 2 words, reference 4: ratio 1/2, penalty exp(1 - 2)
    scores = _bleu([("a b", ["a b c d"])])
    assert scores[0] == pytest.approx(math.exp(-1))
    assert scores[1] == pytest.approx(math.exp(-1))


def test_bleu_uses_the_closest_reference_length():
    # lengths 2 and 5 for a 4-word candidate: closest is 5 (penalty exp(1 - 5/4));
    # "shortest" (2) would give no penalty and BLEU-1 = 1
    assert _bleu([("a b c d", ["a b", "a b c d e"])])[0] == pytest.approx(math.exp(-0.25))


def test_bleu_closest_tie_goes_to_the_shorter_reference():
    # lengths 2 and 4 are both 1 away from 3: the shorter (2) is used, so no brevity penalty
    assert _bleu([("a b c", ["a b", "a b c d"])])[0] == pytest.approx(1.0)


def test_bleu_clips_counts_by_the_reference():
    assert _bleu([("the the the the", ["the cat"])])[0] == pytest.approx(0.25)


def test_bleu_is_corpus_level():
    # matches and totals summed before dividing: (2 + 1) / (2 + 4), not the mean of 1 and 1/4
    assert _bleu([("a b", ["a b"]), ("x y z w", ["x q r s"])])[0] == pytest.approx(0.5)


def test_bleu_empty_candidate_is_zero():
    assert _bleu([("", ["a b c"])]) == [0.0, 0.0, 0.0, 0.0]


# -- CIDEr-D ---------------------------------------------------------------------------------------------


def _cider(pairs: list[tuple[str, list[str]]]) -> list[float]:
    return cm.cider_d([c.split() for c, _ in pairs], [[r.split() for r in refs] for _, refs in pairs])


def test_cider_single_image_corpus_is_zero():
    # idf = log(1) - log(df) = 0 for every n-gram
    assert _cider([("a man riding a horse", ["a man riding a horse"])]) == [0.0]


def test_cider_idf_on_a_two_image_corpus():
    # "a" is in both images' references: idf log 2 - log 2 = 0, so only "cat"/"dog" and the bigrams
    # count; orders 1 and 2 have cosine 1, orders 3 and 4 are empty: mean 0.5, x10
    assert _cider([("a cat", ["a cat"]), ("a dog", ["a dog"])]) == pytest.approx([5.0, 5.0])
    # a candidate made only of the shared word scores 0 although it matches
    assert _cider([("a", ["a cat"]), ("a dog", ["a dog"])])[0] == 0.0
    # disjoint 4-word captions: all four orders have cosine 1
    assert _cider([("a b c d", ["a b c d"]), ("e f g h", ["e f g h"])]) == pytest.approx([10.0, 10.0])


def test_cider_clips_candidate_weights_and_penalises_length():
    # image 1: unigram "x" weight 4L vs 2L -> min(4L, 2L) * 2L / (4L * 2L) = 1/2; bigram "x x" 3L vs L
    # -> 1/3; no trigram in the reference; lengths differ by 2 bigrams -> exp(-4 / 72)
    expected = (0.5 + 1 / 3) / 4 * math.exp(-4 / 72) * 10
    scores = _cider([("x x x x", ["x x"]), ("q", ["y z"])])
    assert scores == pytest.approx([expected, 0.0])
    assert scores[0] == pytest.approx(1.9707488935557615)  # pycocoevalcap 1.2
    # unigram "cat" 2L vs L: min(2L, L) * L / (2L * sqrt(2) L) = 1 / (2 sqrt 2); without clipping 1 / sqrt 2
    scores = _cider([("cat cat", ["cat dog"]), ("q", ["bird fish"])])
    assert scores[0] == pytest.approx(1 / (2 * math.sqrt(2)) / 4 * 10)
    assert scores[0] == pytest.approx(0.8838834764831844)  # pycocoevalcap 1.2


def test_cider_averages_over_the_references():
    # identical to one of two references (cosine 1 on all orders), nothing in common with the other
    assert _cider([("a b c d", ["a b c d", "e f g h"]), ("x", ["i j k l"])]) == pytest.approx([5.0, 0.0])


def test_scores_match_pycocoevalcap_on_pretokenised_captions():
    gts = {
        "a": ["a cat sits on the mat", "there is a cat on the mat"],
        "b": ["the the dog", "a dog barks"],
        "c": ["x y z"],
    }
    res = {"a": "the cat", "b": "the the the the", "c": ""}
    cands = [res[k].split() for k in gts]
    refs = [[r.split() for r in gts[k]] for k in gts]
    assert cm.bleu(cands, refs) == pytest.approx(
        [0.24525296069921063, 0.1501861528987229, 1.6068614651685986e-06, 6.250434469162411e-09], rel=1e-12
    )
    per = cm.cider_d(cands, refs)
    assert per == pytest.approx([0.9262210023184994, 0.6566169368770083, 0.0], rel=1e-12)
    assert sum(per) / len(per) == pytest.approx(0.5276126463985026, rel=1e-12)


RAW_REFERENCES = [
    [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a large wave in the ocean.",
        "A person on a surf board riding a wave.",
        "A man surfing on a big blue wave.",
        "The surfer is riding the wave toward the shore.",
    ],
    [
        "Two dogs playing with a frisbee in the park.",
        "A couple of dogs run across the grass after a frisbee.",
        "Two dogs are chasing a red frisbee.",
        "Dogs playing in a grassy field with a toy.",
        "A brown dog and a white dog play with a Frisbee.",
    ],
    [
        "A plate of food with broccoli and rice.",
        "A white plate topped with rice, chicken and broccoli.",
        "There's a meal of chicken, rice and vegetables on the plate.",
        "Food on a plate, including broccoli (steamed) and rice.",
        "A dinner plate with meat, rice and green broccoli.",
    ],
]
RAW_PREDICTIONS = [
    "A man riding a wave on a surfboard.",
    "Two dogs play with a frisbee on the grass.",
    "A plate of rice and broccoli.",
]


def test_caption_scores_match_pycocoevalcap_end_to_end():
    metrics, per = cm.caption_scores(RAW_PREDICTIONS, RAW_REFERENCES)
    # pycocoevalcap 1.2 with its Java PTBTokenizer
    assert [metrics[f"bleu_{n}"] for n in (1, 2, 3, 4)] == pytest.approx(
        [0.8768596931655209, 0.8019137834942401, 0.6238017362539066, 0.5021422207318299], rel=1e-12
    )
    assert metrics["cider"] == pytest.approx(2.074865460391892, rel=1e-12)
    assert per == pytest.approx([2.41231822125927, 1.912580009799655, 1.8996981501167507], rel=1e-12)
    # what its tokenizer made of the third image's references
    assert [" ".join(t) for t in cm.tokenize_batch(RAW_REFERENCES[2])][2:4] == [
        "there 's a meal of chicken rice and vegetables on the plate",
        "food on a plate including broccoli -lrb- steamed -rrb- and rice",
    ]


def test_metric_function_errors():
    with pytest.raises(ValueError, match="record 1: no reference captions"):
        cm.cider_d([["a"], ["b"]], [[["a"]], []])
    with pytest.raises(ValueError, match="2 candidates but 1 reference lists"):
        cm.bleu([["a"], ["b"]], [[["a"]]])
    with pytest.raises(ValueError, match="no records"):
        cm.caption_scores([], [])


# -- the evaluator ---------------------------------------------------------------------------------------

SAMPLE: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "<image>\nDescribe the image."},
        {"role": "assistant", "content": "A red circle."},
    ],
    "images": ["a.png"],
}


def _evaluator(tiny, **options) -> CaptionEvaluator:
    ev = tiny.build(caption_plugin.SPEC, tiny.make_ctx(), options)
    assert isinstance(ev, CaptionEvaluator)
    return ev


def test_prompt_references_and_parse(tiny):
    ev = _evaluator(tiny)
    assert caption_plugin.SPEC.name == "coco-caption" and ev.primary_metric == "cider"
    assert ev.prompt(SAMPLE) == SAMPLE["messages"][:1]
    suffixed = _evaluator(tiny, prompt_suffix="One sentence.").prompt(SAMPLE)
    assert suffixed == [{"role": "user", "content": "<image>\nDescribe the image.\nOne sentence."}]
    assert SAMPLE["messages"][0]["content"] == "<image>\nDescribe the image."  # not modified
    assert ev.references({**SAMPLE, "captions": ["x", "y"]}) == {"captions": ["x", "y"]}
    assert ev.references({**SAMPLE, "answers": "x"}) == {"captions": ["x"]}
    assert ev.references(SAMPLE) == {"captions": ["A red circle."]}
    assert ev.parse("  A dog.\nOn grass. ") == "A dog.\nOn grass."


def test_score_records(tiny):
    ev = _evaluator(tiny)
    records = [{"prediction": p, "captions": r} for p, r in zip(RAW_PREDICTIONS, RAW_REFERENCES)]
    records[1] = {"prediction": RAW_PREDICTIONS[1], "answers": RAW_REFERENCES[1]}  # "answers" is read too
    metrics, scores = ev.score(records)
    assert set(metrics) == {"cider", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "count"}
    assert metrics["count"] == 3
    assert metrics["cider"] == pytest.approx(2.074865460391892, rel=1e-12)
    assert scores == pytest.approx([2.41231822125927, 1.912580009799655, 1.8996981501167507], rel=1e-12)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"captions": ["x"]}, "record 1: missing 'prediction'"),
        ({"prediction": "x"}, "record 1: missing 'captions'"),
        ({"prediction": "x", "captions": []}, "record 1: 'captions' is empty"),
        ({"prediction": "x", "captions": ["x", 3]}, "record 1: 'captions'[1] must be a string"),
        ({"prediction": "x", "answers": 3}, "record 1: 'answers' must be a string or a list of strings"),
        ({"prediction": None, "captions": ["x"]}, "record 1: 'prediction' must be a string"),
        (["x"], "record 1: expected an object"),
    ],
)
def test_score_errors_name_the_record(tiny, record, message):
    with pytest.raises(ValueError) as excinfo:
        _evaluator(tiny).score([{"prediction": "x", "captions": ["x"]}, record])
    assert str(excinfo.value).startswith(message)


def test_score_rejects_no_records(tiny):
    with pytest.raises(ValueError, match="no records"):
        _evaluator(tiny).score([])
