"""Dataset files: horizon JSONL (the README's Dataset file section), one sample per line.

``{"id": str, "image": path relative to the file (or a list of them, one per
image of the prompt), "question": str, "answer": str or [str, ...], "task": str}``;
extra keys are kept and ignored. A missing or null ``task`` is ``"default"``.
The file is UTF-8 (a leading byte-order mark is allowed).

Every image is opened by :func:`open_rgb`, which converts any PIL mode to
8-bit RGB without clipping (:func:`to_rgb`).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from PIL import Image

from .errors import HorizonError, SampleError

REQUIRED_KEYS = ("id", "image", "question", "answer")

# What opening and decoding an image file can raise for a bad file (not for a bug in horizon): PIL's
# UnidentifiedImageError and truncation errors are OSErrors, some decoders raise SyntaxError, EOFError or
# ValueError, and DecompressionBombError (an image more than twice PIL's pixel limit) derives from Exception only.
IMAGE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError)

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def path_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be opened, in words, or None when it exists.

    pathlib's ``exists()`` is False alike for a missing path, a symbolic link
    loop and a broken link; each needs a different fix, so they are told apart.
    """
    try:
        os.stat(path)
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop (following it leads back to itself); fix or remove the link"
        if os.path.islink(path):
            return f"is a broken symbolic link (its target {os.readlink(path)} does not exist)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "not found"
        return f"cannot be accessed ({exc.strerror})"


def missing_message(path: str | Path, what: str) -> str:
    """'{what} not found: {path}', or what else is wrong with it (a link loop, a broken link)."""
    problem = path_problem(path) or "not found"
    return f"{what} not found: {path}" if problem == "not found" else f"{what} {path} {problem}"


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, whatever its PIL mode, without clipping.

    PIL's own ``convert("RGB")`` clips 16-bit and float images at 255 (a
    16-bit PNG turns almost white). Here 16-bit values (modes I;16*, and I,
    read as 16-bit) map v -> round(v / 257) so v * 257 -> v; float images
    (mode F, e.g. float TIFF) are read as 0..1 and map v -> round(v * 255).
    Values outside those ranges (or NaN) raise ValueError rather than being
    guessed at. Alpha (RGBA, LA, PA, palette transparency) is dropped, not
    composited: LLaVA's reference preprocessing calls ``.convert('RGB')``,
    which drops it (Qwen's qwen_vl_utils composites RGBA on white instead; we
    follow the LLaVA reference for every family). CMYK, YCbCr, 1-bit, L, HSV,
    LAB and palettes use PIL's conversion.
    """
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError(f"{mode} image holds NaN values")
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode == "F":
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"float image (mode F) with values in [{lo:g}, {hi:g}]; horizon reads float images "
                                 "as 0..1: rescale it or save it as an 8-bit image")
            scaled = values * 255.0
        else:
            if lo < 0 or hi > 65535:
                raise ValueError(f"integer image (mode {mode}) with values in [{lo:g}, {hi:g}]; horizon reads it as "
                                 "16-bit (0..65535): save it as an 8- or 16-bit image")
            scaled = values / 257.0
        grey = np.floor(scaled + 0.5).astype(np.uint8)  # round half up
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("P", "PA"):
        # through RGBA: PIL warns when a palette's transparency goes straight to RGB; the colours are the same
        return img.convert("RGBA").convert("RGB")
    if mode == "La":  # premultiplied alpha: undo it first, as for RGBa (which PIL's RGB conversion handles)
        return img.convert("LA").convert("RGB")
    return img.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """The image file at ``path`` as 8-bit RGB (:func:`to_rgb`); raises one of :data:`IMAGE_ERRORS` for a bad file."""
    with Image.open(path) as img:
        return to_rgb(img)


@dataclass
class Sample:
    """One (image(s), question, answer) triple. `answers` holds every accepted answer.

    ``images`` holds every image of the prompt, in order; ``image`` is the first
    (what single-image code and the benchmark readers, which pass one path, use).
    """

    id: str
    image: Path
    question: str
    answers: list[str]
    task: str = "default"
    extra: dict[str, Any] = field(default_factory=dict)
    # Set when the line could be read but the sample itself is unusable; the
    # scan either stops on it or, with on_error="skip", records it.
    problem: str | None = None
    images: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.images and self.image is not None:
            self.images = [self.image]

    @property
    def answer(self) -> str:
        return self.answers[0]

    def load_image(self) -> Image.Image:
        """The first image (single-image callers)."""
        return self.load_images()[0]

    def load_images(self) -> list[Image.Image]:
        """Every image of the sample, in prompt order, as RGB."""
        return [self._load(path) for path in self.images]

    def image_size(self, path: Path) -> tuple[int, int]:
        """(W, H) of one of the sample's images, read from its header."""
        try:
            with Image.open(path) as img:
                return img.size
        except IMAGE_ERRORS as exc:
            raise SampleError(self.id, f"cannot read image {path}: {_one_line(exc)}") from None

    def _load(self, path: Path) -> Image.Image:
        if path_problem(path):
            raise SampleError(self.id, missing_message(path, "image file"))
        try:
            return open_rgb(path)
        except IMAGE_ERRORS as exc:
            raise SampleError(self.id, f"cannot read image {path}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (or its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def sample_from_dict(obj: Mapping[str, Any], base: Path, where: str) -> Sample:
    """Validate one record; `where` names it in error messages (file:line)."""
    if not isinstance(obj, Mapping):
        raise HorizonError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise HorizonError(f"{where}: missing key(s) {', '.join(missing)}")
    sid = obj["id"]
    if not isinstance(sid, (str, int)) or str(sid) == "":
        raise HorizonError(f"{where}: 'id' must be a non-empty string")
    sid = str(sid)
    answer = obj["answer"]
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise HorizonError(f"{where}: 'answer' must be a string or a non-empty list of strings")
    if not isinstance(obj["question"], str):
        raise HorizonError(f"{where}: 'question' must be a string")
    entries = obj["image"]
    if isinstance(entries, list):
        if not entries:
            raise HorizonError(f"{where}: 'image' is an empty list (give one path or a list of paths)")
        for i, entry in enumerate(entries):
            if not isinstance(entry, str) or not entry:
                raise HorizonError(f"{where}: 'image' entry {i} must be a path string, got {entry!r}")
    elif not isinstance(entries, str) or not entries:
        raise HorizonError(f"{where}: 'image' must be a path string or a list of path strings")
    images = [Path(e) for e in ([entries] if isinstance(entries, str) else entries)]
    images = [p if p.is_absolute() else base / p for p in images]
    task = obj.get("task")
    if task is None:  # JSON null is an absent task, not the task "None"
        task = "default"
    elif isinstance(task, bool) or not isinstance(task, (str, int)) or str(task) == "":
        raise HorizonError(f"{where}: 'task' must be a non-empty string (or null for the default task), got {task!r}")
    extra = {k: v for k, v in obj.items() if k not in (*REQUIRED_KEYS, "task")}
    return Sample(sid, images[0], obj["question"], answers, str(task), extra, images=images)


def read_jsonl(path: str | Path, *, strict: bool = True) -> list[Sample]:
    """Read and validate a dataset file.

    With ``strict`` a malformed line raises a one-line HorizonError naming
    ``file:line``; otherwise the line becomes a Sample carrying its problem so
    the scan can record it (``--on-error skip``).
    """
    path = Path(path)
    if not path.is_file():
        raise HorizonError(missing_message(path, "dataset file"))
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    # bytes that are not UTF-8 come through as surrogates, so one bad line is that line's problem, not the file's
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                not_utf8(line, where)
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise HorizonError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                sample = sample_from_dict(obj, path.parent, where)
                if sample.id in seen:
                    raise HorizonError(f"{where}: duplicate id {sample.id!r} (first on line {seen[sample.id]})")
                seen[sample.id] = lineno
            except HorizonError as exc:
                if strict:
                    raise
                sample = Sample(f"line-{lineno}", path, "", [""], "unknown", problem=str(exc))
            samples.append(sample)
    if not samples:
        raise HorizonError(f"{path}: no samples")
    return samples


def not_utf8(line: str, where: str) -> None:
    """Refuse a line read with errors="surrogateescape" that held bytes which are not UTF-8."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(line[exc.start]) - 0xDC00  # surrogateescape keeps the byte as U+DC80..U+DCFF
        raise HorizonError(f"{where}: not UTF-8 text (byte 0x{byte:02x} at column {exc.start + 1}); "
                           "save the file as UTF-8") from None


def as_samples(data: str | Path | Iterable[Sample | Mapping[str, Any]], *, strict: bool = True) -> list[Sample]:
    """Accept a JSONL path, Samples, or plain dicts (images relative to the cwd)."""
    if isinstance(data, (str, Path)):
        return read_jsonl(data, strict=strict)
    out = []
    for i, item in enumerate(data):
        out.append(item if isinstance(item, Sample) else sample_from_dict(item, Path.cwd(), f"sample #{i}"))
    if not out:
        raise HorizonError("no samples given")
    return out
