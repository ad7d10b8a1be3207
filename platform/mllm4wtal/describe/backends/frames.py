"""Frames of a training video for an MLLM: found by name, sampled uniformly, hashed.

A video is a file PyAV can decode (``<videos>/<name>.mp4``, ``.avi``, ``.mkv``, ...) or a
folder of frame images (``<videos>/<name>/000001.jpg`` ...; sorted in natural order). A
fixed number of frames is taken uniformly over the whole video: the middle frame of each of
``num_frames`` equal parts, so a 10-frame video asked for 4 frames gives frames 1, 3, 6, 8.
The frames used are hashed (sha256 of their shape and pixels) into every record, so a store
says exactly what the model saw.

PyAV (``av``) and Pillow are imported when a video is read, never at import time.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mllm4wtal.errors import UserError

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
              ".wmv", ".3gp", ".ts")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class FrameError(UserError):
    """A video that cannot be found or read; the message names the file."""


@dataclass
class Frames:
    """The frames of one video an MLLM is shown."""

    video: str  # the dataset's video name
    source: str  # the file or folder they came from
    array: np.ndarray  # (N, H, W, 3) uint8, RGB
    indices: list[int]  # frame index of each, in the source
    total: int  # frames in the source
    digest: str  # frames_hash(array)

    def __len__(self) -> int:
        return int(self.array.shape[0])


def uniform_indices(total: int, num: int) -> list[int]:
    """``num`` frame indices spread uniformly over ``total`` frames: the middle of each of
    ``num`` equal parts (a short video repeats frames: the count is always ``num``)."""
    if total < 1:
        raise ValueError("a video has at least one frame")
    if num < 1:
        raise ValueError("at least one frame is sampled")
    return [min(total - 1, int((i + 0.5) * total / num)) for i in range(num)]


def frames_hash(array: np.ndarray) -> str:
    """sha256 (first 128 bits, hex) of the frames' shape and pixels."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    h = hashlib.sha256(repr(tuple(a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:32]


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def index_videos(videos_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Video name -> file or frame folder in ``videos_dir`` (one listing, not one ``stat``
    per video and extension). A name with both a file and a folder takes the file; with
    several files, the extension earlier in ``VIDEO_EXTS`` (.mp4 first)."""
    root = Path(videos_dir).expanduser()
    if not root.is_dir():
        raise FrameError(f"--videos '{root}' is not a directory; give the folder that holds "
                         "one video file (<name>.mp4, .avi, ...) or one frame folder per video")
    out: dict[str, Path] = {}
    folders: dict[str, Path] = {}
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTS)}
    with os.scandir(root) as it:
        for entry in it:
            p = Path(entry.path)
            if entry.is_dir():
                folders[p.name] = p
            elif p.suffix.lower() in rank:
                old = out.get(p.stem)
                if old is None or rank[p.suffix.lower()] < rank[old.suffix.lower()]:
                    out[p.stem] = p
    for name, p in folders.items():
        out.setdefault(name, p)
    return out


def _resize_to(h: int, w: int, max_side: int) -> tuple[int, int]:
    if max_side <= 0 or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _frame_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS),
                  key=lambda p: _natural_key(p.name))


def _read_folder(folder: Path, num: int, max_side: int) -> tuple[list[np.ndarray], list[int],
                                                                  int]:
    from PIL import Image

    images = _frame_images(folder)
    if not images:
        raise FrameError(f"{folder}: a frame folder without images "
                         f"({', '.join(IMAGE_EXTS)}); extract the frames or give the video file")
    idx = uniform_indices(len(images), num)
    arrays = []
    cache: dict[int, np.ndarray] = {}
    for i in idx:
        if i not in cache:
            try:
                with Image.open(images[i]) as im:
                    im = im.convert("RGB")
                    h, w = _resize_to(im.height, im.width, max_side)
                    if (h, w) != (im.height, im.width):
                        im = im.resize((w, h), Image.Resampling.BICUBIC)
                    cache[i] = np.asarray(im, dtype=np.uint8)
            except OSError as e:
                raise FrameError(f"{images[i]}: not a readable image ({e})") from None
        arrays.append(cache[i])
    return arrays, idx, len(images)


def _count_frames(path: Path) -> int:
    """Frames of the first video stream: the container's count, else its packets."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        return sum(1 for pkt in container.demux(stream) if pkt.size)


def _decode(path: Path, wanted: list[int], max_side: int) -> tuple[dict[int, np.ndarray], int]:
    """The frames at ``wanted`` indices (decoded in order, the others skipped unconverted)
    and the number of frames decoded."""
    import av

    need = set(wanted)
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if n in need:
                h, w = _resize_to(frame.height, frame.width, max_side)
                if (h, w) != (frame.height, frame.width):
                    frame = frame.reformat(width=w, height=h)
                got[n] = frame.to_ndarray(format="rgb24")
            n += 1
            if n > last:
                break
    return got, n


def _read_video(path: Path, num: int, max_side: int) -> tuple[list[np.ndarray], list[int], int]:
    try:
        import av
    except ImportError:
        raise FrameError("reading video files needs PyAV: pip install 'mllm4wtal[mllm]' "
                         "(or give folders of frame images)") from None
    try:
        total = _count_frames(path)
        if total < 1:
            raise FrameError(f"{path}: no video frames")
        idx = uniform_indices(total, num)
        got, decoded = _decode(path, idx, max_side)
        if len(got) < len(set(idx)):  # the container over-counted: sample what decodes
            if decoded < 1:
                raise FrameError(f"{path}: no frame could be decoded")
            total = decoded
            idx = uniform_indices(total, num)
            got, _ = _decode(path, idx, max_side)
    except (av.error.FFmpegError, IndexError) as e:  # IndexError: no video stream
        raise FrameError(f"{path}: cannot decode ({e or 'no video stream'})") from None
    return [got[i] for i in idx], idx, total


def read_frames(path: str | os.PathLike[str], num_frames: int, max_side: int = 0,
                video: str | None = None) -> Frames:
    """``num_frames`` frames sampled uniformly from a video file or a frame folder, as RGB
    uint8; ``max_side`` > 0 scales frames down so that their longer side is at most that."""
    p = Path(path)
    if p.is_dir():
        arrays, idx, total = _read_folder(p, num_frames, max_side)
    elif p.is_file():
        arrays, idx, total = _read_video(p, num_frames, max_side)
    else:
        raise FrameError(f"video '{p}' does not exist")
    if len({a.shape for a in arrays}) > 1:
        raise FrameError(f"{p}: frames of different sizes {sorted({a.shape for a in arrays})}")
    array = np.stack(arrays)
    return Frames(video=video or p.stem, source=str(p), array=array, indices=idx, total=total,
                  digest=frames_hash(array))


__all__ = ["FrameError", "Frames", "IMAGE_EXTS", "VIDEO_EXTS", "frames_hash", "index_videos",
           "read_frames", "uniform_indices"]
