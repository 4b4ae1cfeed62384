"""Answer metrics for pruning evaluation, following their published definitions.

* exact match (after light normalisation: case, surrounding space and final period);
* VQA accuracy: answers normalised as in the VQA evaluation (punctuation,
  number words, articles, common contractions), then min(1, matches / 3)
  averaged over the 10 leave-one-out subsets of the 10 human answers;
* MME: per question yes/no accuracy, and acc+ = share of images whose two
  questions are both right; the MME score is 100 * (acc + acc+);
* POPE: accuracy, precision, recall, F1 with "yes" as the positive class.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
           "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
# The VQA evaluation restores apostrophes in common contractions; this is the frequent subset.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "hes": "he's", "im": "i'm", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "ive": "i've",
    "lets": "let's", "shes": "she's", "shouldnt": "shouldn't", "thats": "that's", "theres": "there's",
    "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
    "wheres": "where's", "whos": "who's", "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
    "youve": "you've", "yall": "y'all",
}
PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!*#%^&$~|:"
PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_vqa(answer: str) -> str:
    """The VQA evaluation's answer normalisation."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    for p in PUNCTUATION:
        # punctuation next to a space (or inside a number) is dropped, elsewhere it separates words
        text = text.replace(p, "") if (p + " " in text or " " + p in text or COMMA_NUMBER.search(text)) \
            else text.replace(p, " ")
    text = PERIOD.sub("", text)
    words = [NUMBERS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    norm = (lambda s: s.strip().lower().rstrip("."))
    return float(norm(prediction) in {norm(a) for a in answers})


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """min(1, matches / 3) averaged over the leave-one-out subsets of the human answers."""
    pred = normalize_vqa(prediction)
    gts = [normalize_vqa(a) for a in answers]
    if not gts:
        raise ValueError("VQA accuracy needs at least one reference answer")
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        scores.append(min(1.0, sum(g == pred for g in others) / 3.0))
    return sum(scores) / len(scores)


def yes_no(prediction: str) -> str | None:
    """'yes', 'no' or None from a free-form answer (first word decides)."""
    words = re.findall(r"[a-z]+", prediction.lower())
    return words[0] if words and words[0] in ("yes", "no") else None


def mme_scores(image_ids: Sequence[str], predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """MME: accuracy over questions, acc+ over images (both questions right), score = 100 * (acc + acc+)."""
    correct = [yes_no(p) == a.strip().lower() for p, a in zip(predictions, answers)]
    per_image: dict[str, list[bool]] = {}
    for image, ok in zip(image_ids, correct):
        per_image.setdefault(image, []).append(ok)
    acc = sum(correct) / len(correct)
    acc_plus = sum(all(v) for v in per_image.values()) / len(per_image)
    return {"acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus)}


def pope_scores(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """POPE with 'yes' as positive; an answer that is neither yes nor no counts as 'no'."""
    pred = [yes_no(p) == "yes" for p in predictions]
    gold = [a.strip().lower() == "yes" for a in answers]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    tn = len(pred) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(pred), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(pred) / len(pred)}
