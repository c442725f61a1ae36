"""Videos as frame sequences: which frames to take, and reading them.

A video in a canonical sample (``sample["videos"][k]``, one ``<video>`` in the text for each) is:

* a list of frame references (anything :func:`~vlmplug.train.data.load_image` reads), in order;
* ``{"frames": [...], "fps": 30}``: the same with the frame rate, which ``frame_sampling: fps`` needs;
* a path to a directory of frame images (taken in name order; ``fps`` unknown);
* a path to a video file, decoded with PyAV (``pip install "vlmplug[video]"``; the file's frame count
  and average rate come from its header).

At most ``max_num_frames`` frames are taken (the guide's video recipe: 8): ``uniform`` takes the
middle frame of ``max_num_frames`` equal segments (every frame when there are fewer; TSN-style
segment sampling, Wang et al. 2016), ``fps`` one frame every ``1 / sampling_fps`` seconds from the
first, thinned uniformly when that exceeds ``max_num_frames`` (the fixed-rate sampling of Video-LLaVA
/ Qwen2-VL's ``fps`` option).

Nothing here imports PyAV until a video file is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from vlmplug.errors import DataError

__all__ = ["VIDEO_TOKEN", "FRAME_SUFFIXES", "VideoOptions", "frame_indices", "probe", "read_frames"]

#: The placeholder of a video in message text (one per entry of ``videos``, in order).
VIDEO_TOKEN = "<video>"
#: Files a frame directory is read from.
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class VideoOptions:
    max_num_frames: int = 8
    frame_sampling: Literal["uniform", "fps"] = "uniform"
    sampling_fps: float = 1.0


def frame_indices(total: int, fps: float | None, options: VideoOptions, where: str) -> list[int]:
    """The frames of a ``total``-frame video to take, in order (see the module docstring)."""
    if total < 1:
        raise DataError(f"{where}: the video has no frames", reason="empty-video", where=where)
    if options.frame_sampling == "fps":
        if not fps or fps <= 0:
            raise DataError(
                f"{where}: frame_sampling: fps needs the video's frame rate; give the video as "
                f"{{frames: [...], fps: N}} or a video file, or use frame_sampling: uniform",
                reason="video-fps",
                where=where,
            )
        step = fps / options.sampling_fps
        picked = [round(k * step) for k in range(math.ceil(total / step))]
        picked = sorted({i for i in picked if i < total})
        if len(picked) <= options.max_num_frames:
            return picked
        return [picked[j] for j in _segment_middles(len(picked), options.max_num_frames)]
    if total <= options.max_num_frames:
        return list(range(total))
    return _segment_middles(total, options.max_num_frames)


def _segment_middles(total: int, count: int) -> list[int]:
    """The middle index of each of ``count`` equal segments of ``range(total)`` (``count <= total``)."""
    return [min(total - 1, math.floor((k + 0.5) * total / count)) for k in range(count)]


def _frame_list(video: Any, where: str) -> tuple[list[Any] | None, float | None]:
    """``(frame references, fps)`` for a listed or directory video; ``(None, None)`` for a video file."""
    if isinstance(video, dict):
        frames = video.get("frames")
        if not isinstance(frames, list):
            raise DataError(
                f"{where}: a video given as an object needs 'frames': a list of images (and optionally 'fps')",
                reason="malformed-row",
                where=where,
            )
        fps = video.get("fps")
        return frames, float(fps) if fps is not None else None
    if isinstance(video, list):
        return video, None
    if isinstance(video, (str, Path)):
        path = Path(video)
        if path.is_dir():
            return sorted(str(p) for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), None
        if not path.is_file():
            raise DataError(
                f"{where}: video not found: {video}; fix the path (relative to the data file) or set "
                f"on_bad_sample: skip",
                reason="missing-video",
                where=where,
            )
        return None, None
    raise DataError(
        f"{where}: a video must be a list of frames, {{frames, fps}}, a frame directory or a video file, "
        f"got {type(video).__name__}",
        reason="malformed-row",
        where=where,
    )


def _open_av(path: str, where: str) -> Any:
    try:
        import av
    except ImportError:
        raise DataError(
            f'{where}: reading video files needs PyAV: pip install "vlmplug[video]" (or give the '
            f"frames as a list or a directory of images)",
            reason="missing-extra",
            where=where,
        ) from None
    try:
        return av.open(path)
    except Exception as e:
        raise DataError(
            f"{where}: cannot read video {path}: {type(e).__name__}: {e}; replace the file or set on_bad_sample: skip",
            reason="unreadable-video",
            where=where,
        ) from None


def probe(video: Any, options: VideoOptions, where: str) -> list[int]:
    """Check a video cheaply (files exist, a video file's header) and return the frame indices to take."""
    frames, fps = _frame_list(video, where)
    if frames is not None:
        return frame_indices(len(frames), fps, options, where)
    with _open_av(str(video), where) as container:
        if not container.streams.video:
            raise DataError(f"{where}: {video} has no video stream", reason="unreadable-video", where=where)
        stream = container.streams.video[0]
        total = stream.frames or sum(1 for _ in container.decode(stream))
        rate = float(stream.average_rate) if stream.average_rate else None
    return frame_indices(total, rate, options, where)


def read_frames(video: Any, indices: list[int], where: str) -> list[Image.Image]:
    """The frames at ``indices`` as RGB images (a video file is decoded once, front to back)."""
    from .data import load_image

    frames, _ = _frame_list(video, where)
    if frames is not None:
        return [load_image(frames[i], where) for i in indices]
    wanted = set(indices)
    out: dict[int, Image.Image] = {}
    with _open_av(str(video), where) as container:
        try:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    out[i] = frame.to_image().convert("RGB")
                if len(out) == len(wanted):
                    break
        except Exception as e:
            raise DataError(
                f"{where}: video {video} failed to decode at frame {len(out)}: {type(e).__name__}: {e}",
                reason="unreadable-video",
                where=where,
            ) from None
    missing = [i for i in indices if i not in out]
    if missing:
        raise DataError(
            f"{where}: video {video} ended before frame {missing[0]} (its header promised more)",
            reason="unreadable-video",
            where=where,
        )
    return [out[i] for i in indices]
