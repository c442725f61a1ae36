"""VQAv2, GQA and TextVQA question files -> canonical short-answer samples.

Every question is checked first and becomes a :class:`Question` (a bad one is a
:class:`~vlmplug.errors.DataError` naming the file and question id, under the run's ``on_bad_sample``
policy); then the samples are made, one per question, in file order.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmplug.errors import DataError

from ._caption import IMAGE, _load_json, image_token, raise_or_skip
from ._messages import _outside

#: Image file names by layout (VQAv2's split part comes from the questions file's name).
PATTERNS = {"vqav2": "COCO_{split}_{{image_id:012d}}.jpg", "gqa": "{{image_id}}.jpg", "textvqa": "{{image_id}}.jpg"}


@dataclass
class Question:
    """One checked question: where it is, its id, image, text, annotators' answers and types."""

    where: str
    question_id: Any
    image_id: Any
    question: str
    answers: list[str]
    multiple_choice: str | None
    question_type: str | None
    answer_type: str | None
    extra: dict[str, Any]


def detect_layout(data: Any, path: Path) -> str:
    """``vqav2``, ``gqa`` or ``textvqa`` from the JSON's shape, or a DataError saying what it is."""
    if isinstance(data, dict):
        if isinstance(data.get("questions"), list):
            return "vqav2"
        if isinstance(data.get("data"), list):
            first = data["data"][0] if data["data"] else {}
            if isinstance(first, dict) and ("questionId" in first or "image" in first):
                raise DataError(
                    f"{path}: this looks like DocVQA ({{data: [{{questionId, image, ...}}]}}); use format: document"
                )
            return "textvqa"
        if isinstance(data.get("annotations"), list):
            raise DataError(
                f"{path}: this is a VQAv2 annotations file; give the questions file as questions: "
                f"(v2_OpenEnded_mscoco_*_questions.json) and this one as annotations:"
            )
        first = next(iter(data.values()), None)
        if isinstance(first, dict) and "imageId" in first:
            return "gqa"
    raise DataError(
        f"{path}: not a VQAv2 ({{questions: [...]}}), GQA ({{qid: {{imageId, question, answer}}}}) or TextVQA "
        f"({{data: [...]}}) questions file; set layout: if it is one of them"
    )


def default_pattern(layout: str, questions: Path) -> str:
    """The layout's image file name; VQAv2's names the split of its questions file (``val2014``, ...)."""
    split = "train2014"
    found = re.search(r"mscoco_([A-Za-z0-9-]+?)_questions", questions.name)
    if found:
        split = re.sub(r"^test-dev", "test", found.group(1))  # test-dev questions use the test images
    return PATTERNS[layout].format(split=split)


def most_common(answers: list[str]) -> str:
    """The most frequent answer (case-insensitively; ties go to the one given first), as first written."""
    keys = [a.strip().lower() for a in answers]
    top = Counter(keys).most_common(1)[0][0]
    return answers[keys.index(top)].strip()


def _problem(message: str, reason: str, where: str) -> DataError:
    return DataError(message, reason=reason, where=where)


def _answers(value: Any, where: str) -> tuple[list[str], DataError | None]:
    if not isinstance(value, list) or not value:
        return [], _problem(
            f"{where}: no answers (a test split has none); training and scoring need answered questions",
            "no-answers",
            where,
        )
    out = []
    for j, a in enumerate(value):
        text = a.get("answer") if isinstance(a, dict) else a
        if not isinstance(text, str):
            return [], _problem(f"{where}: answers[{j}] must be a string, got {a!r:.80}", "malformed-row", where)
        out.append(text)
    if not any(a.strip() for a in out):
        return [], _problem(f"{where}: every answer is empty; fill or drop the question", "no-answers", where)
    return out, None


def _question_text(row: dict[str, Any], where: str) -> DataError | None:
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        return _problem(f"{where}: 'question' must be a non-empty string", "malformed-row", where)
    if row.get("image_id", row.get("imageId")) in (None, ""):
        return _problem(f"{where}: no image_id, so no image to ask about", "malformed-row", where)
    return None


def vqav2(questions: Any, path: Path, annotations_path: Path | None) -> tuple[list[Question], list[DataError]]:
    """VQAv2: questions joined with their annotation by ``question_id``."""
    if annotations_path is None:
        raise DataError(
            f"{path}: VQAv2 questions carry no answers; set annotations: to the matching annotations file "
            f"(e.g. v2_mscoco_train2014_annotations.json)"
        )
    data = _load_json(annotations_path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(
            f"{annotations_path}: a VQAv2 annotations file needs the list 'annotations' "
            f"({{question_id, answers, multiple_choice_answer, ...}})"
        )
    by_id = {a["question_id"]: a for a in data["annotations"] if isinstance(a, dict) and "question_id" in a}
    records, problems = [], []
    for n, row in enumerate(questions["questions"]):
        qid = row.get("question_id") if isinstance(row, dict) else None
        where = f"{path} question {qid}" if qid is not None else f"{path} question #{n}"
        if not isinstance(row, dict) or qid is None:
            problems.append(_problem(f"{where}: expected {{image_id, question, question_id}}", "malformed-row", where))
            continue
        problem = _question_text(row, where)
        if problem is not None:
            problems.append(problem)
            continue
        ann = by_id.get(qid)
        if ann is None:
            problems.append(
                _problem(
                    f"{where}: no annotation with this question_id in {annotations_path}; use the annotations "
                    f"file of the same split",
                    "missing-annotation",
                    where,
                )
            )
            continue
        if ann.get("image_id", row["image_id"]) != row["image_id"]:
            problems.append(
                _problem(
                    f"{where}: the question is about image {row['image_id']} but its annotation about image "
                    f"{ann['image_id']}; the files do not belong together",
                    "annotation-mismatch",
                    where,
                )
            )
            continue
        answers, problem = _answers(ann.get("answers"), where)
        if problem is not None:
            problems.append(problem)
            continue
        mc = ann.get("multiple_choice_answer")
        extra = {k: v for k, v in row.items() if k not in ("image_id", "question", "question_id")}
        records.append(
            Question(
                where,
                qid,
                row["image_id"],
                row["question"].strip(),
                answers,
                mc if isinstance(mc, str) and mc.strip() else None,
                ann.get("question_type"),
                ann.get("answer_type"),
                extra,
            )
        )
    return records, problems


def gqa(data: dict[str, Any], path: Path) -> tuple[list[Question], list[DataError]]:
    """GQA: ``{qid: {imageId, question, answer, fullAnswer, types, ...}}``, one answer per question."""
    records, problems = [], []
    for qid, row in data.items():
        where = f"{path} question {qid}"
        if not isinstance(row, dict):
            problems.append(_problem(f"{where}: expected {{imageId, question, answer}}", "malformed-row", where))
            continue
        problem = _question_text(row, where)
        if problem is not None:
            problems.append(problem)
            continue
        answers, problem = _answers([row["answer"]] if "answer" in row else None, where)
        if problem is not None:
            problems.append(problem)
            continue
        types = row.get("types") if isinstance(row.get("types"), dict) else {}
        extra = {"full_answer": row["fullAnswer"]} if "fullAnswer" in row else {}
        records.append(
            Question(
                where,
                qid,
                row["imageId"],
                row["question"].strip(),
                answers,
                answers[0],
                types.get("detailed"),
                types.get("structural"),
                extra,
            )
        )
    return records, problems


def textvqa(data: dict[str, Any], path: Path) -> tuple[list[Question], list[DataError]]:
    """TextVQA: ``{data: [{question, image_id, answers: [10 strings], question_id, ...}]}``."""
    records, problems = [], []
    for n, row in enumerate(data["data"]):
        qid = row.get("question_id") if isinstance(row, dict) else None
        where = f"{path} question {qid}" if qid is not None else f"{path} question #{n}"
        if not isinstance(row, dict):
            problems.append(_problem(f"{where}: expected {{question, image_id, answers}}", "malformed-row", where))
            continue
        problem = _question_text(row, where)
        if problem is not None:
            problems.append(problem)
            continue
        answers, problem = _answers(row.get("answers"), where)
        if problem is not None:
            problems.append(problem)
            continue
        keep = ("set_name", "image_classes", "flickr_original_url", "image_width", "image_height")
        extra = {k: row[k] for k in keep if k in row}
        records.append(Question(where, qid, row["image_id"], row["question"].strip(), answers, None, None, None, extra))
    return records, problems


def image_path(q: Question, root: Path, pattern: str) -> tuple[str | None, DataError | None]:
    try:
        name = pattern.format(image_id=q.image_id)
    except (ValueError, KeyError, IndexError) as e:
        return None, _problem(
            f"{q.where}: image_pattern {pattern!r} does not fit image_id {q.image_id!r} ({e}); fix image_pattern",
            "malformed-row",
            q.where,
        )
    return str(root / name), None


class VqaDataset(Sequence):
    """Canonical samples from VQA question files: the prompt with the question, the target answer."""

    def __init__(self, config: Any, skip_bad: bool = False, token: str = IMAGE, allow_outside: bool = False):
        self.path = Path(config.questions)
        data = _load_json(self.path)
        self.layout = detect_layout(data, self.path) if config.layout == "auto" else config.layout
        self._check_shape(data)
        if self.layout != "vqav2" and config.annotations:
            raise DataError(
                f"{config.annotations}: only VQAv2 has a separate annotations file; {self.path} is {self.layout}"
            )
        if self.layout == "vqav2":
            annotations = Path(config.annotations) if config.annotations else None
            records, problems = vqav2(data, self.path, annotations)
        elif self.layout == "gqa":
            records, problems = gqa(data, self.path)
        else:
            records, problems = textvqa(data, self.path)
        if config.answer == "multiple_choice" and self.layout == "textvqa":
            raise DataError(
                f"{self.path}: answer: multiple_choice needs VQAv2's multiple_choice_answer, which TextVQA "
                f"lacks; use answer: most_common"
            )
        root = Path(config.image_root) if config.image_root else self.path.parent
        pattern = config.image_pattern or default_pattern(self.layout, self.path)
        prompt = config.prompt.replace(IMAGE, token)
        self.samples: list[dict[str, Any]] = []
        for q in records:
            image, problem = image_path(q, root, pattern)
            if problem is None and not allow_outside:
                outside = _outside({"images": [image]}, root, q.where)
                problem = DataError(outside, reason="outside-data", where=q.where) if outside else None
            if problem is None and config.answer == "multiple_choice" and q.multiple_choice is None:
                problem = _problem(
                    f"{q.where}: no multiple_choice_answer; use answer: most_common", "no-answers", q.where
                )
            if problem is not None:
                problems.append(problem)
                continue
            target = q.multiple_choice if config.answer == "multiple_choice" else most_common(q.answers)
            self.samples.append(
                {
                    **q.extra,
                    "messages": [
                        {"role": "user", "content": prompt.replace("{question}", q.question)},
                        {"role": "assistant", "content": target},
                    ],
                    "images": [image],
                    "answers": q.answers,
                    "question_type": q.question_type,
                    "answer_type": q.answer_type,
                    "question_id": q.question_id,
                    "image_id": q.image_id,
                    "_where": q.where,
                }
            )
        self.skipped: list[DataError] = raise_or_skip(problems, self.path, skip_bad)
        if config.max_samples is not None:
            self.samples = self.samples[: config.max_samples]

    def _check_shape(self, data: Any) -> None:
        """With ``layout`` given explicitly: the file must have that layout's top-level shape."""
        want = {"vqav2": "{questions: [...]}", "gqa": "{qid: {imageId, question, answer}}", "textvqa": "{data: [...]}"}
        ok = isinstance(data, dict) and (
            (self.layout == "vqav2" and isinstance(data.get("questions"), list))
            or (self.layout == "textvqa" and isinstance(data.get("data"), list))
            or (self.layout == "gqa" and all(isinstance(v, dict) for v in data.values()))
        )
        if not ok:
            raise DataError(
                f"{self.path}: layout {self.layout} expects {want[self.layout]}; check questions: / layout:"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]  # no slices
        return self.samples[i]


def build(config: Any, ctx: Any) -> VqaDataset:
    return VqaDataset(
        config,
        skip_bad=ctx.on_bad_sample == "skip",
        token=image_token(ctx),
        allow_outside=bool(getattr(ctx, "allow_paths_outside_data", False)),
    )
