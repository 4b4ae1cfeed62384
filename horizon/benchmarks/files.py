"""Reading the files benchmarks come in: JSON lines, LLaVA question files, JSON documents.

Every problem raises a one-line :class:`~horizon.errors.HorizonError` naming
the file (and line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import not_utf8
from ..errors import HorizonError

# How much of a file format=auto looks at.
HEAD_CHARS = 65536


def json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; every line must be a JSON object."""
    out = []
    try:
        with path.open(encoding="utf-8-sig", errors="surrogateescape") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                not_utf8(line, f"{path}:{lineno}")  # names the line, not just the file
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise HorizonError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise HorizonError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                out.append((lineno, obj))
    except UnicodeDecodeError:
        raise HorizonError(f"{path}: not a UTF-8 text file") from None
    if not out:
        raise HorizonError(f"{path}: no lines to read (empty file)")
    return out


def first_object(path: Path) -> tuple[int, Any]:
    """(line number, value) of the first non-blank line."""
    try:
        with path.open(encoding="utf-8-sig", errors="surrogateescape") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    not_utf8(line, f"{path}:{lineno}")
                    try:
                        return lineno, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise HorizonError(
                            f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError:
        raise HorizonError(f"{path}: not a UTF-8 text file") from None
    raise HorizonError(f"{path}: no lines to read (empty file)")


def head(path: Path, chars: int = HEAD_CHARS) -> str:
    """The first characters of a text file ("" for a folder or a file that is not UTF-8 text)."""
    if not path.is_file():
        return ""
    try:
        with path.open(encoding="utf-8") as fh:
            return fh.read(chars)
    except UnicodeDecodeError:
        return ""


def read_json(path: Path, flag: str) -> Any:
    """A whole JSON document; ``flag`` (``--answers``, ``--summary``, ...) names the option in messages."""
    path = Path(path)
    if path.is_dir():
        raise HorizonError(f"{flag} {path}: is a folder, not a JSON file")
    if not path.exists():
        raise HorizonError(f"{flag} {path}: file not found")
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise HorizonError(f"{flag} {path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError:
        raise HorizonError(f"{path}: not a UTF-8 text file") from None


@dataclass
class LlavaQuestion:
    """One line of a LLaVA evaluation question file (``model_vqa_loader`` input)."""

    lineno: int
    question_id: str | int
    image: str
    text: str
    category: str | None
    where: str  # "file:line" for messages


def check_entry(entry: Any, where: str, required: tuple[str, ...]) -> None:
    """One entry of an annotation document: a JSON object with the ``required`` keys and a string 'question'."""
    if not isinstance(entry, dict):
        raise HorizonError(f"{where} is not a JSON object")
    missing = [k for k in required if k not in entry]
    if missing:
        raise HorizonError(f"{where} is missing key(s) {', '.join(missing)}")
    if not isinstance(entry["question"], str):
        raise HorizonError(f"{where}: 'question' must be a string")


def llava_questions(path: Path, *, need_category: bool = False) -> list[LlavaQuestion]:
    out = []
    for lineno, obj in json_lines(path):
        where = f"{path}:{lineno}"
        required = ("question_id", "image", "text") + (("category",) if need_category else ())
        missing = [k for k in required if k not in obj]
        if missing:
            raise HorizonError(f"{where}: missing key(s) {', '.join(missing)}")
        qid = obj["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or str(qid) == "":
            raise HorizonError(f"{where}: 'question_id' must be a non-empty string or an integer")
        if not isinstance(obj["image"], str) or not obj["image"]:
            raise HorizonError(f"{where}: 'image' must be a file name")
        if not isinstance(obj["text"], str):
            raise HorizonError(f"{where}: 'text' must be a string")
        category = obj.get("category")
        if category is not None and (not isinstance(category, str) or not category):
            raise HorizonError(f"{where}: 'category' must be a non-empty string")
        out.append(LlavaQuestion(lineno, qid, obj["image"], obj["text"], category, where))
    return out


def image_path(folder: Path, image: str) -> Path:
    return folder / image  # an absolute image path stays as it is


def squash(text: str) -> str:
    """Case- and whitespace-insensitive form of a question, for matching."""
    return " ".join(text.split()).casefold()
