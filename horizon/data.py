"""Dataset files: DESIGN §4 JSONL, one sample per line.

``{"id": str, "image": path relative to the file (or a list of them, one per
image of the prompt), "question": str, "answer": str or [str, ...], "task": str}``;
extra keys are kept and ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from PIL import Image, UnidentifiedImageError

from .errors import HorizonError, SampleError

REQUIRED_KEYS = ("id", "image", "question", "answer")


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
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise SampleError(self.id, f"cannot read image {path}: {exc}") from None

    def _load(self, path: Path) -> Image.Image:
        if not path.exists():
            raise SampleError(self.id, f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise SampleError(self.id, f"cannot read image {path}: {exc}") from None


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
    extra = {k: v for k, v in obj.items() if k not in (*REQUIRED_KEYS, "task")}
    return Sample(sid, images[0], obj["question"], answers, str(obj.get("task", "default")), extra, images=images)


def read_jsonl(path: str | Path, *, strict: bool = True) -> list[Sample]:
    """Read and validate a dataset file.

    With ``strict`` a malformed line raises a one-line HorizonError naming
    ``file:line``; otherwise the line becomes a Sample carrying its problem so
    the scan can record it (``--on-error skip``).
    """
    path = Path(path)
    if not path.is_file():
        raise HorizonError(f"dataset file not found: {path}")
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
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
