"""The scored token carries the answer: Llama-style word boundaries are fed, never scored.

The tiny LLaVA here has a SentencePiece-style tokenizer built like Llama's
(``'▁'`` for spaces, digits never merged with the boundary), so `` 2`` after
``ASSISTANT:`` is ``['▁', '2']`` as with the real llava-1.5 tokenizer. The
expected log-probabilities are computed from the model's own forward pass.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import horizon
from horizon.scan import first_text_token
from horizon.tiny import build_tiny


@pytest.fixture(scope="module")
def spm_llava(tmp_path_factory):
    path = build_tiny(tmp_path_factory.mktemp("spm") / "llava", arch="llava", tokenizer="spm", grid=(3, 3),
                      layers=2, seed=3)
    return horizon.load(path, dtype="float32", device="cpu")


def write_data(root, answers):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, answer in enumerate(answers):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype("uint8")).save(root / "img" / f"{i}.png")
        lines.append({"id": f"a{i}", "image": f"img/{i}.png", "question": "how many objects are there?",
                      "answer": answer})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_the_tiny_spm_tokenizer_splits_the_boundary_off_digits_as_llama_does(spm_llava):
    tok = spm_llava.tokenizer
    prompt = spm_llava.adapter.prompt(spm_llava.processor, "how many objects are there?")
    prefix = tok(prompt, add_special_tokens=False).input_ids
    for answer, pieces in (("2", ["▁", "2"]), ("3.5", ["▁", "3", ".", "5"]), ("red", ["▁red"])):
        full = tok(prompt + " " + answer, add_special_tokens=False).input_ids
        assert tok.convert_ids_to_tokens(full[len(prefix):]) == pieces


@pytest.mark.parametrize("span", ["first", "full"])
def test_number_answers_score_the_digit_not_the_shared_boundary(spm_llava, tmp_path, span):
    vlm, tok = spm_llava, spm_llava.tokenizer
    data = write_data(tmp_path, ["2", "3.5", "red"])
    result = horizon.scan(vlm, data, group=3, metrics=("dlogp",), answer_span=span, progress=False)
    rows = result.samples.set_index("sample_id")
    # sample -> (offset of the first text token, its text, the text of the whole answer)
    expected = {"a0": (1, "2", "2"), "a1": (1, "3", "3.5"), "a2": (0, "red", "red")}
    for sid, (offset, first_text, whole) in expected.items():
        row = rows.loc[sid]
        assert row.scored_offset == offset
        assert row.scored_text == (first_text if span == "first" else whole)
        ids = list(row.answer_ids)
        assert tok.decode(ids[offset:offset + 1]).strip() == first_text
        # clean_logp from the model's own forward pass over exactly the fed sequence
        inputs = vlm.processor(images=[Image.open(tmp_path / "img" / f"{sid[1:]}.png").convert("RGB")],
                               text=vlm.adapter.prompt(vlm.processor, "how many objects are there?"),
                               return_tensors="pt")
        start = inputs["input_ids"].shape[1]
        assert list(row.input_ids[:start]) == inputs["input_ids"][0].tolist()
        fed = torch.tensor([list(row.input_ids)])
        with torch.no_grad():
            logits = vlm.hf(input_ids=fed, pixel_values=inputs["pixel_values"]).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        scored = range(offset, len(ids))
        want = sum(float(logp[start - 1 + j, ids[j]]) for j in scored)
        assert abs(row.clean_logp - want) < 1e-5
        if span == "first":
            assert len(ids) == offset + 1  # the boundary is fed, the digit is the one token scored


def test_keep_protocol_scores_the_same_token(spm_llava, tmp_path):
    data = write_data(tmp_path, ["2"])
    remove = horizon.scan(spm_llava, data, group=3, metrics=("dlogp",), progress=False).samples.iloc[0]
    keep = horizon.scan(spm_llava, data, group=3, protocol="keep", progress=False).samples.iloc[0]
    assert keep.scored_offset == remove.scored_offset == 1
    assert keep.clean_logp == pytest.approx(remove.clean_logp, abs=1e-6)


def test_first_text_token_on_byte_level_and_spm_pieces(spm_llava, models):
    spm = spm_llava.tokenizer
    assert first_text_token(spm, spm.convert_tokens_to_ids(["▁", "3", ".", "5"])) == 1
    assert first_text_token(spm, spm.convert_tokens_to_ids(["▁red"])) == 0
    assert first_text_token(spm, spm.convert_tokens_to_ids(["▁", "▁"])) is None
    qwen = models["qwen2_5_vl"].tokenizer  # byte-level BPE: answers follow the prompt without a boundary token
    assert first_text_token(qwen, qwen("2", add_special_tokens=False).input_ids) == 0
    space_red = qwen(" red", add_special_tokens=False).input_ids
    assert first_text_token(qwen, space_red) == next(
        k for k in range(len(space_red)) if qwen.decode(space_red[: k + 1]).strip())
    # one character split over byte tokens: its first byte already carries it
    umlaut = [qwen.convert_tokens_to_ids(t) for t in ("Ã", "¼")]
    assert None not in umlaut and first_text_token(qwen, umlaut) == 0


def test_a_whitespace_only_answer_is_a_sample_error(spm_llava, tmp_path):
    data = write_data(tmp_path, [" "])
    result = horizon.scan(spm_llava, data, group=3, metrics=("dlogp",), on_error="skip", progress=False)
    status = result.samples.status.iloc[0]
    assert status.startswith("error:") and "no text to score" in status, status
