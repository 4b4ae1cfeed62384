"""Dataset files: DESIGN §4 JSONL, one sample per line.

``{"id": str, "image": path relative to the file, "question": str,
"answer": str or [str, ...], "task": str}``; extra keys are kept and ignored.
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
    """One (image, question, answer) triple. `answers` holds every accepted answer."""

    id: str
    image: Path
    question: str
    answers: list[str]
    task: str = "default"
    extra: dict[str, Any] = field(default_factory=dict)
    # Set when the line could be read but the sample itself is unusable; the
    # scan either stops on it or, with on_error="skip", records it.
    problem: str | None = None

    @property
    def answer(self) -> str:
        return self.answers[0]

    def load_image(self) -> Image.Image:
        if not self.image.exists():
            raise SampleError(self.id, f"image file not found: {self.image}")
        try:
            with Image.open(self.image) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise SampleError(self.id, f"cannot read image {self.image}: {exc}") from None


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
    if not isinstance(obj["image"], str) or not obj["image"]:
        raise HorizonError(f"{where}: 'image' must be a path string")
    image = Path(obj["image"])
    image = image if image.is_absolute() else base / image
    extra = {k: v for k, v in obj.items() if k not in (*REQUIRED_KEYS, "task")}
    return Sample(sid, image, obj["question"], answers, str(obj.get("task", "default")), extra)


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
