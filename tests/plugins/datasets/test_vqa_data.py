"""``vqa-data``: VQAv2 questions + annotations, GQA and TextVQA files become short-answer samples that
keep every annotator answer and the types; the layout is detected from the JSON; bad questions are
named by file and question id and follow the skip policy; and a run trains on VQAv2-style files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from vlmplug.errors import DataError
from vlmplug.plugins.datasets import vqa_data
from vlmplug.plugins.datasets.vqa_data import DEFAULT_PROMPT

SUFFIX = "\nAnswer the question using a single word or phrase."


def _answers(*words: str) -> list[dict[str, Any]]:
    return [{"answer": w, "answer_confidence": "yes", "answer_id": i + 1} for i, w in enumerate(words)]


#: The layout of v2_OpenEnded_mscoco_train2014_questions.json / v2_mscoco_train2014_annotations.json.
QUESTIONS = {
    "info": {},
    "task_type": "Open-Ended",
    "data_type": "mscoco",
    "data_subtype": "train2014",
    "questions": [
        {"image_id": 458752, "question": "What is this photo taken looking through?", "question_id": 458752000},
        {"image_id": 458752, "question": "What position is this man playing?", "question_id": 458752001},
    ],
}
ANNOTATIONS = {
    "annotations": [
        {
            "question_type": "what is this",
            "multiple_choice_answer": "net",
            "answers": _answers(*["net"] * 8, "netting", "mesh"),
            "image_id": 458752,
            "answer_type": "other",
            "question_id": 458752000,
        },
        {
            "question_type": "what",
            "multiple_choice_answer": "pitcher",
            "answers": _answers("catcher", "pitcher", "catcher", "pitcher", "pitcher", *["catcher"] * 5),
            "image_id": 458752,
            "answer_type": "other",
            "question_id": 458752001,
        },
    ]
}


def _load(tiny: Any, path: Path, on_bad_sample: str = "error", **options: Any) -> Any:
    return tiny.build(vqa_data.SPEC, tiny.make_ctx(on_bad_sample), {"questions": str(path), **options})


def _vqav2(tmp_path: Path, questions: dict | None = None, annotations: dict | None = None) -> tuple[Path, Path]:
    q = tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json"
    a = tmp_path / "v2_mscoco_train2014_annotations.json"
    q.write_text(json.dumps(questions or QUESTIONS))
    a.write_text(json.dumps(annotations or ANNOTATIONS))
    return q, a


def test_vqav2_questions_and_annotations(tiny: Any, tmp_path: Path) -> None:
    q, a = _vqav2(tmp_path)
    root = tmp_path / "train2014"
    ds = _load(tiny, q, annotations=str(a), image_root=str(root))
    assert len(ds) == 2 and ds.skipped == [] and ds.layout == "vqav2"
    assert ds[0] == {
        "messages": [
            {"role": "user", "content": "<image>\nWhat is this photo taken looking through?" + SUFFIX},
            {"role": "assistant", "content": "net"},
        ],
        "images": [str(root / "COCO_train2014_000000458752.jpg")],
        "answers": [*["net"] * 8, "netting", "mesh"],
        "question_type": "what is this",
        "answer_type": "other",
        "question_id": 458752000,
        "image_id": 458752,
        "_where": f"{q} question 458752000",
    }
    # most_common: catcher (6 of 10); multiple_choice: VQAv2's own pick
    assert ds[1]["messages"][1]["content"] == "catcher"
    ds = _load(tiny, q, annotations=str(a), answer="multiple_choice")
    assert ds[1]["messages"][1]["content"] == "pitcher"
    assert ds[1]["images"] == [str(tmp_path / "COCO_train2014_000000458752.jpg")]  # default root: the file's


def test_image_pattern_follows_the_split_and_can_be_set(tiny: Any, tmp_path: Path) -> None:
    q, a = _vqav2(tmp_path)
    val = q.rename(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json")
    assert _load(tiny, val, annotations=str(a))[0]["images"] == [str(tmp_path / "COCO_val2014_000000458752.jpg")]
    ds = _load(tiny, val, annotations=str(a), image_pattern="coco/{image_id}.png", prompt="{question} <image>")
    assert ds[0]["images"] == [str(tmp_path / "coco" / "458752.png")]
    assert ds[0]["messages"][0]["content"] == "What is this photo taken looking through? <image>"


def test_gqa_balanced_questions(tiny: Any, tmp_path: Path) -> None:
    data = {
        "02930152": {
            "semantic": [],
            "entailed": ["02930160"],
            "equivalent": ["02930152"],
            "question": "Is the sky dark?",
            "imageId": "2354786",
            "isBalanced": True,
            "groups": {"global": None, "local": "06-sky_dark"},
            "answer": "yes",
            "semanticStr": "select: sky (2486325)->verify color: dark [0]",
            "annotations": {"answer": {}, "question": {"2": "2486325"}, "fullAnswer": {"2": "2486325"}},
            "types": {"detailed": "verifyAttr", "semantic": "attr", "structural": "verify"},
            "fullAnswer": "Yes, the sky is dark.",
        }
    }
    path = tmp_path / "train_balanced_questions.json"
    path.write_text(json.dumps(data))
    ds = _load(tiny, path, image_root=str(tmp_path / "images"))
    assert ds.layout == "gqa"
    assert ds[0] == {
        "messages": [
            {"role": "user", "content": "<image>\nIs the sky dark?" + SUFFIX},
            {"role": "assistant", "content": "yes"},
        ],
        "images": [str(tmp_path / "images" / "2354786.jpg")],
        "answers": ["yes"],
        "question_type": "verifyAttr",
        "answer_type": "verify",
        "question_id": "02930152",
        "image_id": "2354786",
        "full_answer": "Yes, the sky is dark.",
        "_where": f"{path} question 02930152",
    }


def test_textvqa(tiny: Any, tmp_path: Path) -> None:
    row = {
        "question": "what is the brand of phone?",
        "image_id": "0054c91397f2fe05",
        "image_classes": ["Belt", "Headphones"],
        "flickr_original_url": "https://farm6.staticflickr.com/2891/9134076951_f65b421097_o.jpg",
        "flickr_300k_url": "https://c4.staticflickr.com/3/2891/9134076951_f65b421097_z.jpg",
        "image_width": 1024,
        "image_height": 730,
        "answers": ["nokia", "Nokia", "nokia", "toshiba", "nokia", "nokia", "nokia", "nokia", "nokia", "nokia"],
        "question_tokens": ["what", "is", "the", "brand", "of", "phone"],
        "question_id": 0,
        "set_name": "train",
    }
    path = tmp_path / "TextVQA_0.5.1_train.json"
    path.write_text(json.dumps({"dataset_type": "train", "dataset_name": "textvqa", "data": [row]}))
    ds = _load(tiny, path, image_root=str(tmp_path / "train_images"))
    assert ds.layout == "textvqa"
    assert ds[0] == {
        "messages": [
            {"role": "user", "content": "<image>\nwhat is the brand of phone?" + SUFFIX},
            {"role": "assistant", "content": "nokia"},
        ],
        "images": [str(tmp_path / "train_images" / "0054c91397f2fe05.jpg")],
        "answers": row["answers"],
        "question_type": None,
        "answer_type": None,
        "question_id": 0,
        "image_id": "0054c91397f2fe05",
        "set_name": "train",
        "image_classes": ["Belt", "Headphones"],
        "flickr_original_url": row["flickr_original_url"],
        "image_width": 1024,
        "image_height": 730,
        "_where": f"{path} question 0",
    }
    with pytest.raises(DataError, match="answer: multiple_choice needs VQAv2's multiple_choice_answer"):
        _load(tiny, path, answer="multiple_choice")


def test_bad_questions_are_named_and_follow_the_skip_policy(tiny: Any, tmp_path: Path) -> None:
    questions = json.loads(json.dumps(QUESTIONS))
    questions["questions"] += [
        {"image_id": 1, "question": "Orphan?", "question_id": 7},
        {"question": "Which image?", "question_id": 8},
        {"image_id": 458752, "question": "Unanswered?", "question_id": 9},
    ]
    annotations = json.loads(json.dumps(ANNOTATIONS))
    annotations["annotations"].append({"question_id": 9, "image_id": 458752, "answers": []})
    q, a = _vqav2(tmp_path, questions, annotations)
    with pytest.raises(DataError) as e:
        _load(tiny, q, annotations=str(a))
    text = str(e.value)
    assert f"3 bad record(s) in {q}" in text
    assert f"{q} question 7: no annotation with this question_id in {a}" in text
    assert f"{q} question 8: no image_id" in text
    assert f"{q} question 9: no answers" in text
    ds = _load(tiny, q, on_bad_sample="skip", annotations=str(a))
    assert len(ds) == 2
    assert [(s.reason, s.where) for s in ds.skipped] == [
        ("missing-annotation", f"{q} question 7"),
        ("malformed-row", f"{q} question 8"),
        ("no-answers", f"{q} question 9"),
    ]
    assert len(_load(tiny, q, on_bad_sample="skip", annotations=str(a), max_samples=1)) == 1


def test_files_and_layouts_that_do_not_fit(tiny: Any, tmp_path: Path) -> None:
    q, a = _vqav2(tmp_path)
    with pytest.raises(DataError, match="VQAv2 questions carry no answers; set annotations:"):
        _load(tiny, q)
    with pytest.raises(DataError, match="this is a VQAv2 annotations file; give the questions file"):
        _load(tiny, a)
    with pytest.raises(DataError, match="layout gqa expects"):
        _load(tiny, q, layout="gqa")
    docvqa = tmp_path / "train_v1.0.json"
    docvqa.write_text(json.dumps({"data": [{"questionId": 1, "question": "?", "image": "d.png", "answers": ["a"]}]}))
    with pytest.raises(DataError, match=r"looks like DocVQA .* use format: document"):
        _load(tiny, docvqa)
    with pytest.raises(DataError, match="file not found"):
        _load(tiny, tmp_path / "nope.json", annotations=str(a))
    with pytest.raises(DataError, match=r"image_pattern .* does not fit image_id '2354786'"):
        gqa = tmp_path / "gqa.json"
        gqa.write_text(json.dumps({"1": {"imageId": "2354786", "question": "Dark?", "answer": "no"}}))
        _load(tiny, gqa, image_pattern="{image_id:012d}.jpg")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"prompt": "{question}"}, "must contain exactly one <image> and {question}"),
        ({"image_pattern": "a.jpg"}, "must contain {image_id}"),
        ({"layout": "gqa", "annotations": "a.json"}, "only VQAv2 has a separate annotations file"),
    ],
)
def test_options_are_checked(tiny: Any, tmp_path: Path, options: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected.replace("{", r"\{").replace("}", r"\}")):
        _load(tiny, tmp_path / "q.json", **options)


def test_images_outside_the_dataset_folder(tiny: Any, tmp_path: Path) -> None:
    q, a = _vqav2(tmp_path)
    with pytest.raises(DataError, match="is outside the dataset folder"):
        _load(tiny, q, annotations=str(a), image_pattern="../{image_id}.jpg")
    ds = _load(tiny, q, on_bad_sample="skip", annotations=str(a), image_pattern="../{image_id}.jpg")
    assert len(ds) == 0 and {e.reason for e in ds.skipped} == {"outside-data"}


def test_default_prompt_is_llava_15s() -> None:
    assert DEFAULT_PROMPT == "<image>\n{question}" + SUFFIX


def test_a_run_trains_on_vqav2_files(run_recipe: Any, tmp_path: Path) -> None:
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    questions, annotations = [], []
    for i in range(6):
        name = "red" if i % 2 else "blue"
        Image.new("RGB", (32, 32), colours[name]).save(tmp_path / f"COCO_train2014_{i:012d}.jpg")
        questions.append({"image_id": i, "question": "What color is it?", "question_id": 100 + i})
        annotations.append(
            {
                "question_id": 100 + i,
                "image_id": i,
                "answers": _answers(*[name] * 10),
                "multiple_choice_answer": name,
                "question_type": "what color is the",
                "answer_type": "other",
            }
        )
    q, a = _vqav2(tmp_path, {"questions": questions}, {"annotations": annotations})
    res = run_recipe(
        None,
        steps=2,
        datasets=[{"format": "vqa-data", "questions": str(q), "annotations": str(a)}],
        eval_datasets=[],
        evaluators=[],
    )
    assert res.metrics["train_samples"] == 6 and res.metrics["train"]["steps"] == 2
    saved = yaml.safe_load((res.run_dir / "resolved_recipe.yaml").read_text())
    assert saved["components"]["dataset_format"] == ["vqa-data"]
