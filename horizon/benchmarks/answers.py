"""Answer normalisation and leave-one-out accuracy shared by the VQA-family evaluators.

The official VQA evaluation and the EvalAI answer processor that TextVQA's
evaluation uses (in LLaVA's and MMF's code) share these steps and tables,
quirks included; each benchmark module composes them in its evaluator's order
(:mod:`horizon.benchmarks.vqav2`, :mod:`horizon.benchmarks.textvqa`).

Punctuation
    The marks ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` -- and no
    others: ``$ % & * # : ' ~ ^ |`` and friends stay in the answer. Each mark
    is deleted outright when the text *as it came in* (not as it is being
    rewritten) has that mark next to a space, or when it has a comma between
    two digits anywhere; otherwise the mark becomes a space. So ``red/blue``
    is two words, ``red / blue`` and ``1,000`` lose the mark, and in
    ``1,000/yr`` the slash is deleted too because of the comma.
Periods
    A period not followed by a digit is deleted (``3.5`` keeps it, ``5.``
    and ``e.g.`` lose theirs). The official pattern meant to spare periods
    after a digit too, but its look-behind is written as a look-ahead, so only
    the next character counts. And it passes a flag where the number of
    replacements goes, so at most 32 periods are deleted per answer.
Words
    Lower-cased and split on whitespace; the number words none/zero ... ten
    become digits (``none`` -> ``0``); the articles a/an/the are dropped; then
    a word found in the contraction table below is replaced by its
    apostrophised form (``dont`` -> ``don't``, ``oclock`` -> ``o'clock``).
    The table has a few capitalised keys (``Im``, ``Ive``, ``Id've``) that can
    never match a lower-cased word, so ``im`` stays ``im``; and one entry runs
    backwards (``somebody'd`` -> ``somebodyd``).
Leave-one-out accuracy
    For n human answers: the mean over i of min(1, m_i / 3), where m_i counts
    the answers other than the i-th that equal the (normalised) prediction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["PUNCTUATION", "NUMBER_WORDS", "ARTICLES", "CONTRACTIONS", "punctuation", "words",
           "leave_one_out"]

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}

ARTICLES = frozenset({"a", "an", "the"})

# written form=restored form, all 120 entries of the official table.
_CONTRACTION_TABLE = """
'ow'sat='ow's'at 'ows'at='ow's'at aint=ain't arent=aren't cant=can't couldn'tve=couldn't've
couldnt=couldn't couldnt've=couldn't've couldve=could've didnt=didn't doesnt=doesn't dont=don't
hadn'tve=hadn't've hadnt=hadn't hadnt've=hadn't've hasnt=hasn't havent=haven't he'dve=he'd've
hed=he'd hed've=he'd've hes=he's howd=how'd howll=how'll hows=how's I'dve=I'd've Id've=I'd've Im=I'm
isnt=isn't it'dve=it'd've itd=it'd itd've=it'd've itll=it'll Ive=I've let's=let's maam=ma'am
mightn'tve=mightn't've mightnt=mightn't mightnt've=mightn't've mightve=might've mustnt=mustn't
mustve=must've neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at
shant=shan't she'dve=she'd've she's=she's shed've=she'd've shouldn'tve=shouldn't've
shouldnt=shouldn't shouldnt've=shouldn't've shouldve=should've somebody'd=somebodyd
somebody'dve=somebody'd've somebodyd've=somebody'd've somebodyll=somebody'll somebodys=somebody's
someone'dve=someone'd've someoned=someone'd someoned've=someone'd've someonell=someone'll
someones=someone's something'dve=something'd've somethingd=something'd somethingd've=something'd've
somethingll=something'll thats=that's there'dve=there'd've thered=there'd thered've=there'd've
therere=there're theres=there's they'dve=they'd've theyd=they'd theyd've=they'd've theyll=they'll
theyre=they're theyve=they've twas='twas wasnt=wasn't we'dve=we'd've wed've=we'd've werent=weren't
weve=we've whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
wheres=where's whereve=where've who'dve=who'd've whod=who'd whod've=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldn'tve=wouldn't've wouldnt=wouldn't
wouldnt've=wouldn't've wouldve=would've y'all'dve=y'all'd've y'alld've=y'all'd've y'allll=y'all'll
yall=y'all yall'd've=y'all'd've yall'll=y'all'll you'dve=you'd've youd=you'd youd've=you'd've
youll=you'll youre=you're youve=you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split("=") for pair in _CONTRACTION_TABLE.split())

# A period not followed by a digit (see the module docstring for why only the next character counts).
_PERIOD = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (32) in the position of the replacement count.
PERIOD_LIMIT = int(re.UNICODE)


def punctuation(text: str, digit_comma: re.Pattern[str]) -> str:
    """The punctuation and period steps; ``digit_comma`` is the evaluator's "comma between digits" test."""
    delete_all = digit_comma.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # the test reads the text as it came in, not `out`
        delete = delete_all or (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD.sub("", out, count=PERIOD_LIMIT)


def words(text: str) -> str:
    """Lower-case, number words to digits, articles dropped, contractions restored; single spaces."""
    kept = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            kept.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in kept)


def leave_one_out(prediction: str, answers: Sequence[str], keys: Sequence[object] | None = None) -> float:
    """Mean over the human answers i of min(1, matches among the others / 3).

    "The others" are the answers whose ``(answer, key)`` differs from the i-th
    one's; ``keys`` defaults to the positions, so exactly one answer is left
    out each time. (The VQA evaluation compares whole answer records, which
    carry unique ids in the official files; see :mod:`horizon.benchmarks.vqav2`.)
    """
    if not answers:
        raise ValueError("leave-one-out accuracy needs at least one human answer")
    ids = list(range(len(answers))) if keys is None else list(keys)
    if len(ids) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(ids)} keys")
    records = list(zip(answers, ids))
    accs = []
    for left_out in records:
        matches = sum(1 for record in records if record != left_out and record[0] == prediction)
        accs.append(min(1, float(matches) / 3))
    return float(sum(accs)) / len(accs)
