"""Reader for the ``hf`` format: ``datasets.load_dataset`` (or ``load_from_disk``), then columns ->
canonical samples.

The text columns are converted and checked up front (each row named ``hf:{path}[{split}] row {i}``,
under the run's ``on_bad_sample`` policy); images stay in the Arrow table and are read when a sample
is used (``datasets.Image`` values come undecoded, as ``{bytes, path}``: the bytes, else the path,
go to the pipeline's image loader), so a large image dataset is never held in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmplug.errors import DataError

from ._caption import image_token, raise_or_skip
from ._conversations import ROLES as FROM_ROLES
from ._messages import _check, _outside, _resolve

#: Local file suffix -> the ``datasets`` packaged builder that reads it.
BUILDERS = {
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".arrow": "arrow",
}
#: Rows read from the Arrow table at a time while checking.
BATCH = 1000
#: Feature types that hold media, never kept as extra fields (nor is a column of bytes, dates, ...).
MEDIA_FEATURES = ("Image", "Audio", "Video", "Pdf")


def load(config: Any, hub_kwargs: dict[str, Any]) -> Any:
    """The split as a ``datasets.Dataset``; a DataError saying what to fix when it cannot be read."""
    import datasets

    p = Path(config.path)
    source = f"hf:{config.path}[{config.split}]"
    if not p.exists() and (p.suffix.lower() in BUILDERS or p.is_absolute() or config.path.startswith(".")):
        raise DataError(
            f"{source}: {config.path} not found (local paths are relative to where you run vlmplug)",
            reason="missing-file",
        )
    try:
        if p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(p))  # a save_to_disk folder, which load_dataset refuses
            if isinstance(ds, datasets.DatasetDict):
                if config.split not in ds:
                    raise DataError(f"{source}: no split '{config.split}' (splits: {', '.join(ds)}); set split")
                ds = ds[config.split]
            return ds
        kwargs: dict[str, Any] = {"split": config.split, "cache_dir": config.cache_dir}
        if hub_kwargs.get("trust_remote_code"):
            kwargs["trust_remote_code"] = True
        if p.is_file():
            builder = BUILDERS.get(p.suffix.lower())
            if builder is None:
                raise DataError(
                    f"{source}: cannot tell how to read a '{p.suffix}' file; use one of {', '.join(BUILDERS)}, "
                    f"or name the builder: {{path: BUILDER, data_files: {config.path}}}"
                )
            if p.suffix.lower() == ".tsv":
                kwargs["delimiter"] = "\t"
            return datasets.load_dataset(builder, data_files=str(p), **kwargs)
        return datasets.load_dataset(
            config.path, name=config.name, data_files=config.data_files, data_dir=config.data_dir, **kwargs
        )
    except DataError:
        raise
    except Exception as e:
        hub = "" if p.exists() else " (a hub id needs the network once, or a cached copy with HF_HUB_OFFLINE=1)"
        raise DataError(
            f"{source}: datasets cannot load it: {type(e).__name__}: {str(e)[:400]}; check path, name, split "
            f"and data_files{hub}",
            reason="unreadable-dataset",
        ) from None


def _content(value: Any, where: str, j: int, token: str) -> tuple[str | None, str | None]:
    """A turn's content as text: a string, or multimodal parts (``{"type": "image"}`` -> the token)."""
    if isinstance(value, str):
        return value, None
    if not isinstance(value, list):
        return None, f"{where}: messages[{j}] content must be a string or a list of parts, got {value!r:.80}"
    text = ""
    for k, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            piece = token
        elif kind == "text" and isinstance(part.get("text"), str):
            piece = part["text"]
        else:
            return None, f"{where}: messages[{j}] content[{k}] must be {{type: text, text}} or {{type: image}}"
        if text and piece and not (text[-1].isspace() or piece[0].isspace()):
            text += "\n"
        text += piece
    return text, None


def to_messages(turns: Any, where: str, token: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """``[{role, content}]`` (or ShareGPT's ``[{from, value}]``) -> canonical messages."""
    if not isinstance(turns, list):
        return None, f"{where}: the messages column must hold a list of {{role, content}}, got {turns!r:.80}"
    out = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return None, f"{where}: messages[{j}] must be {{role, content}}, got {turn!r:.80}"
        role: Any = turn.get("role")
        value = turn.get("content")
        if role is None and turn.get("from") is not None:  # ShareGPT turns; the role is checked later
            role, value = FROM_ROLES.get(str(turn["from"]).lower(), turn["from"]), turn.get("value")
        content, problem = _content(value, where, j, token)
        if problem:
            return None, problem
        out.append({"role": role, "content": content})
    return out, None


def _answer(value: Any, labels: Any) -> tuple[str | None, list | None]:
    """``(target or None when empty, all answers when the cell is a list)``: a list of answers (strings
    or VQAv2's ``{answer}`` dicts) trains on the most frequent one, the first on ties."""
    answers = None
    if isinstance(value, list):
        answers = value
        texts = [a.get("answer") if isinstance(a, dict) else a for a in value]
        texts = [str(t).strip() for t in texts if isinstance(t, (str, int, float)) and str(t).strip()]
        value = Counter(texts).most_common(1)[0][0] if texts else None
    elif isinstance(value, int) and not isinstance(value, bool) and labels is not None:
        value = labels.int2str(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return None, None
    return value.strip(), answers


def _image_ref(value: Any, root: Path | None) -> Any:
    """A path, bytes, PIL image or ``{bytes, path}`` -> what the pipeline's image loader reads."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, str) and root is not None:
        return _resolve(value, root)
    return value


def _plain(tp: Any) -> bool:
    """Whether an Arrow type holds JSON values only (text, numbers, booleans, lists and structs of them),
    so a column of it can be kept with the samples and written to reports."""
    import pyarrow as pa

    t = pa.types
    if any(f(tp) for f in (t.is_null, t.is_boolean, t.is_integer, t.is_floating, t.is_string, t.is_large_string)):
        return True
    if t.is_list(tp) or t.is_large_list(tp) or t.is_fixed_size_list(tp):
        return _plain(tp.value_type)
    if t.is_struct(tp):
        return all(_plain(tp.field(k).type) for k in range(tp.num_fields))
    return False


class HfDataset(Sequence):
    """The rows of one split as canonical samples; see the module docstring."""

    def __init__(
        self,
        config: Any,
        ds: Any,
        skip_bad: bool = False,
        token: str = "<image>",
        note: Any = None,
        allow_outside: bool = False,
    ):
        self.source = f"hf:{config.path}[{config.split}]"
        if config.max_samples is not None and config.max_samples < len(ds):
            ds = ds.select(range(config.max_samples))
        self.qa = config.question_column is not None
        self.config, self.token = config, token
        columns = list(ds.column_names)
        self.image_col = self._image_column(config, columns, note)
        text_cols = [config.question_column, config.answer_column] if self.qa else [config.messages_column]
        self._check_columns(config, columns, text_cols)
        self.root = _image_root(config)
        features = ds.features
        media = {c for c in columns if type(features[c]).__name__ in MEDIA_FEATURES}
        schema = features.arrow_schema
        keep = [
            c
            for c in columns
            if c not in media and c not in (*text_cols, self.image_col) and _plain(schema.field(c).type)
        ]
        self.labels = features.get(config.answer_column) if self.qa else None
        if type(self.labels).__name__ != "ClassLabel":
            self.labels = None
        self._media = ds.select_columns([self.image_col]).with_format("arrow") if self.image_col else None
        counts = _image_counts(ds, self.image_col) if self.qa else []
        paths: dict[int, list[str]] = {}  # rows' image files, checked against the dataset folder
        if self.image_col is not None and self.root is not None and not allow_outside:
            paths = _local_paths(ds, self.image_col)

        self.rows: list[int] = []
        self.samples: list[dict[str, Any]] = []
        problems: list[DataError] = []
        text = ds.select_columns([*text_cols, *keep]).with_format("arrow")
        i = 0
        for batch in text.iter(batch_size=BATCH):
            for row in batch.to_pylist():
                where = f"{self.source} row {i}"
                sample, problem = self._qa(row, counts[i], where) if self.qa else self._conversation(row, where)
                if sample is not None and (message := _check(sample, where)):
                    problem = DataError(message, reason="malformed-row", where=where)
                if problem is None and i in paths:
                    assert self.root is not None
                    local = {"images": [_resolve(ref, self.root) for ref in paths[i]]}
                    if message := _outside(local, self.root, where):
                        problem = DataError(message, reason="outside-data", where=where)
                if problem is not None:
                    problems.append(problem)
                elif sample is not None:
                    extra = {k: row[k] for k in keep}
                    self.rows.append(i)
                    self.samples.append({**extra, **sample, "_where": where})
                i += 1
        self.skipped: list[DataError] = raise_or_skip(problems, self.source, skip_bad)

    def _image_column(self, config: Any, columns: list[str], note: Any) -> str | None:
        if not self.qa:
            return config.images_column if config.images_column in columns else None
        if config.image_column is not None or "image" not in columns:
            return config.image_column
        if note is not None:
            note(f"{self.source}: images from column 'image' (set image_column to choose another)")
        return "image"

    def _check_columns(self, config: Any, columns: list[str], text_cols: list[str]) -> None:
        """A column the mapping names but the table lacks (the default ``images`` may be absent)."""
        named = [*text_cols, *([self.image_col] if self.image_col else [])]
        if not self.qa and config.images_column != "images":
            named.append(config.images_column)
        missing = [c for c in named if c not in columns]
        if missing:
            hint = (
                "set question_column / answer_column / image_column"
                if self.qa
                else "set messages_column / images_column, or question_column + answer_column for a QA table"
            )
            raise DataError(f"{self.source}: no column {', '.join(map(repr, missing))} (columns: {columns}); {hint}")

    def _conversation(self, row: dict[str, Any], where: str) -> tuple[dict[str, Any] | None, DataError | None]:
        messages, problem = to_messages(row[self.config.messages_column], where, self.token)
        if problem is not None:
            return None, DataError(problem, reason="malformed-row", where=where)
        return {"messages": messages}, None

    def _qa(self, row: dict[str, Any], n_images: int, where: str) -> tuple[dict[str, Any] | None, DataError | None]:
        question = row[self.config.question_column]
        if not isinstance(question, str):
            return None, DataError(
                f"{where}: the question ({self.config.question_column}) must be a string, got {question!r:.80}",
                reason="malformed-row",
                where=where,
            )
        answer, answers = _answer(row[self.config.answer_column], self.labels)
        if answer is None:
            return None, DataError(
                f"{where}: empty answer in {self.config.answer_column} (nothing to learn from it); fill or drop "
                f"the row",
                reason="empty-answer",
                where=where,
            )
        prompt = (self.token * n_images + "\n" + question) if n_images else question
        sample: dict[str, Any] = {
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        }
        if answers is not None:
            sample["answers"] = answers
        return sample, None

    def images(self, row: int) -> list[Any]:
        """The image references of dataset row ``row``, read from the Arrow table."""
        if self._media is None:
            return []
        value = self._media[row].column(0)[0].as_py()
        values = value if isinstance(value, list) else [value]
        return [_image_ref(v, self.root) for v in values if v not in (None, "")]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]  # no slices
        return {**self.samples[i], "images": self.images(self.rows[i])}


def _image_root(config: Any) -> Path | None:
    """The dataset folder: ``image_root``, else the data file's folder, the data folder or ``data_dir``;
    ``None`` for a hub dataset (its files live in the datasets cache)."""
    if config.image_root:
        return Path(config.image_root)
    p = Path(config.path)
    if p.is_file():
        return p.parent
    if p.is_dir():
        return p
    return Path(config.data_dir) if config.data_dir and Path(config.data_dir).is_dir() else None


def _local_paths(ds: Any, column: str) -> dict[int, list[str]]:
    """Row -> the image paths it reads from disk: path strings, and ``{bytes, path}`` values without
    bytes. Read from the Arrow column a batch at a time; no image bytes are copied."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out: dict[int, list[str]] = {}
    start = 0
    for batch in ds.select_columns([column]).with_format("arrow").iter(batch_size=BATCH):
        for arr in batch.column(0).chunks:
            if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
                rows, values = pc.list_parent_indices(arr).to_pylist(), pc.list_flatten(arr)
            else:
                rows, values = list(range(len(arr))), arr
            if pa.types.is_struct(values.type):
                without_bytes = pc.invert(pc.struct_field(values, "bytes").is_valid())
                paths = pc.if_else(pc.and_(values.is_valid(), without_bytes), pc.struct_field(values, "path"), None)
            elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
                paths = values
            else:
                paths = pa.nulls(len(values), pa.string())
            for row, path in zip(rows, paths.to_pylist()):
                if path:
                    out.setdefault(start + row, []).append(path)
            start += len(arr)
    return out


def _image_counts(ds: Any, column: str | None) -> list[int]:
    """Images per row, from the Arrow column (no image is read): list lengths, or 0/1 for one image
    (a null or an empty path is none)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column is None:
        return [0] * len(ds)
    col = ds.with_format("arrow")[column]
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return pc.fill_null(pc.list_value_length(col), 0).to_pylist()
    present = col.is_valid()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        present = pc.and_(present, pc.fill_null(pc.not_equal(col, ""), False))
    return [int(v) for v in present.to_pylist()]


def build(config: Any, ctx: Any) -> HfDataset:
    ds = load(config, getattr(ctx, "hub_kwargs", None) or {})
    return HfDataset(
        config,
        ds,
        skip_bad=ctx.on_bad_sample == "skip",
        token=image_token(ctx),
        note=getattr(ctx, "note", None),
        allow_outside=bool(getattr(ctx, "allow_paths_outside_data", False)),
    )
