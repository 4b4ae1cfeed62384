"""Readers for prune-eval question files, on small fixtures in the real on-disk formats."""

from __future__ import annotations

import json
from pathlib import Path


from horizon.data import Sample
from horizon.benchmarks import EvalSet, read_eval
from helpers import error_of

SHORT = "\nAnswer the question using a single word or phrase."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# TextVQA: llava_textvqa_val_v051_ocr.jsonl + TextVQA_0.5.1_val.json

CAMERA = "What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL, Single-Use, Camera" + SHORT
LIQUOR = "What brand liquor is on the right?\nReference OCR token: MORANGIE, WHISKY, SINGLE, MALT" + SHORT
AGED = "How long has the drink on the right been aged?\nReference OCR token: MORANGIE, AGED, 10" + SHORT
JERSEY = "What number is on the player's jersey?" + SHORT  # the no-OCR prompt variant


def textvqa_files(root: Path) -> tuple[Path, Path]:
    questions = write_jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg", "text": CAMERA, "category": "default"},
        {"question_id": "831bcec304a17054", "image": "831bcec304a17054.jpg", "text": LIQUOR, "category": "default"},
        {"question_id": "831bcec304a17054", "image": "831bcec304a17054.jpg", "text": AGED, "category": "default"},
        {"question_id": "94ad4aad01e27a32", "image": "94ad4aad01e27a32.jpg", "text": JERSEY, "category": "default"},
    ])
    def entry(qid, image_id, question, answers):
        return {"question": question, "image_id": image_id, "image_classes": ["Camera"], "answers": answers,
                "question_tokens": question.split(), "question_id": qid, "set_name": "val"}
    annotations = root / "TextVQA_0.5.1_val.json"
    annotations.write_text(json.dumps({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
                                       "data": [
        entry(34602, "003a8ae2ef43b901", "what is the brand of this camera?",
              ["nous les gosses", "dakota"] + ["dakota"] * 8),
        entry(34603, "831bcec304a17054", "what brand liquor is on the right?", ["bowmore islay"] * 5 + ["bowmore"] * 5),
        entry(34604, "831bcec304a17054", "how long has the drink on the right been aged?", ["10 years"] * 9 + ["10"]),
        entry(34605, "94ad4aad01e27a32", "what number is on the player's jersey?", ["22"] * 10),
        entry(34606, "181f00d3ee2b2076", "what is the time?", ["5:41"] * 10),  # not asked: ignored
    ]}), encoding="utf-8")
    return questions, annotations


def test_textvqa_reads_llava_questions_with_official_answers(tmp_path):
    questions, annotations = textvqa_files(tmp_path)
    got = read_eval(questions, answers=annotations, image_folder=tmp_path / "train_images", format="textvqa")
    # scored as LLaVA's eval_textvqa does (EvalAI answer processing), not with VQAv2's rules
    assert isinstance(got, EvalSet) and (got.metric, got.format) == ("textvqa", "textvqa")
    assert [s.id for s in got.samples] == ["34602", "34603", "34604", "34605"]
    camera, liquor, aged, jersey = got.samples
    assert isinstance(camera, Sample)
    assert camera.question == CAMERA and liquor.question == LIQUOR and jersey.question == JERSEY  # verbatim prompts
    assert camera.answers == ["nous les gosses", "dakota"] + ["dakota"] * 8
    assert aged.answers == ["10 years"] * 9 + ["10"]  # second question on the same image gets its own answers
    assert liquor.answers[0] == "bowmore islay"
    assert camera.image == tmp_path / "train_images" / "003a8ae2ef43b901.jpg"
    assert {s.task for s in got.samples} == {"textvqa"}
    assert aged.extra["image_id"] == "831bcec304a17054"


def test_textvqa_matches_ocr_first_prompts_and_official_question_ids(tmp_path):
    _, annotations = textvqa_files(tmp_path)
    questions = write_jsonl(tmp_path / "mine.jsonl", [
        # OCR tokens before the question (LLaVA's other prompt layout), extra space in the question
        {"question_id": "831bcec304a17054", "image": "831bcec304a17054.jpg",
         "text": "Reference OCR token: MORANGIE, AGED, 10\nHow long has the drink on the right  been aged?" + SHORT},
        # the official numeric question_id instead of the image id, and a reworded question
        {"question_id": 34605, "image": "94ad4aad01e27a32.jpg", "text": "Something else entirely?" + SHORT},
    ])
    got = read_eval(questions, answers=annotations, format="textvqa")
    assert [s.id for s in got.samples] == ["34604", "34605"]
    assert got.samples[0].answers == ["10 years"] * 9 + ["10"] and got.samples[1].answers == ["22"] * 10
    assert got.samples[0].image == tmp_path / "831bcec304a17054.jpg"  # no --image-folder: next to the file


def test_textvqa_question_asked_twice_about_one_image_pairs_in_order(tmp_path):
    # TextVQA can ask the same question twice about an image; LLaVA's evaluator keeps only the last
    annotations = tmp_path / "TextVQA_0.5.1_val.json"
    annotations.write_text(json.dumps({"data": [
        {"question_id": 40001, "image_id": "5ce862cbefd8458f", "question": "what does the sign say?",
         "answers": ["denny's"] * 10},
        {"question_id": 40002, "image_id": "5ce862cbefd8458f", "question": "what does the sign say?",
         "answers": ["dennys"] * 10},
    ]}))
    line = {"question_id": "5ce862cbefd8458f", "image": "5ce862cbefd8458f.jpg",
            "text": "What does the sign say?\nReference OCR token: Deniy's, D" + SHORT}
    questions = write_jsonl(tmp_path / "q.jsonl", [line, line])
    got = read_eval(questions, answers=annotations)
    assert [(s.id, s.answers[0]) for s in got.samples] == [("40001", "denny's"), ("40002", "dennys")]


def test_textvqa_errors_name_the_file_and_line(tmp_path):
    questions, annotations = textvqa_files(tmp_path)
    error_of(lambda: read_eval(questions, format="textvqa"), str(questions), "--answers")
    missing = write_jsonl(tmp_path / "q2.jsonl", [
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg", "text": CAMERA},
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg", "text": "Who took it?" + SHORT},
    ])
    error_of(lambda: read_eval(missing, answers=annotations, format="textvqa"),
             f"{missing}:2:", "no ground truth", str(annotations), "who took it?")
    error_of(lambda: read_eval(questions, answers=tmp_path / "nope.json", format="textvqa"),
             str(tmp_path / "nope.json"), "--answers")
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [{"question_id": 1,\n "image_id": }]}')
    error_of(lambda: read_eval(questions, answers=broken, format="textvqa"), str(broken), "malformed JSON", "line 2")
    test_split = tmp_path / "TextVQA_0.5.1_test.json"
    test_split.write_text(json.dumps({"data": [{"question_id": 34602, "image_id": "003a8ae2ef43b901",
                                                "question": "what is the brand of this camera?"}]}))
    error_of(lambda: read_eval(questions, answers=test_split, format="textvqa"), str(test_split), "34602", "answers")
    twice = write_jsonl(tmp_path / "twice.jsonl", [
        {"question_id": "94ad4aad01e27a32", "image": "94ad4aad01e27a32.jpg", "text": JERSEY},
        {"question_id": "94ad4aad01e27a32", "image": "94ad4aad01e27a32.jpg", "text": JERSEY},
    ])
    error_of(lambda: read_eval(twice, answers=annotations, format="textvqa"), f"{twice}:2:", "line 1")


# ---------------------------------------------------------------------------
# MME: llava_mme.jsonl + MME_Benchmark_release_version

def mme_files(root: Path) -> tuple[Path, Path]:
    release = root / "MME_Benchmark_release_version"
    # a category whose ground truth sits next to the images
    (release / "code_reasoning").mkdir(parents=True)
    (release / "code_reasoning" / "0020.txt").write_text(
        "Is a python code shown in the picture? Please answer yes or no.\tYes\n"
        "Is a c++ code shown in the picture? Please answer yes or no.\tNo\n", encoding="utf-8")
    # a category with images/ and questions_answers_YN/ (one question with MME's double space)
    (release / "artwork" / "images").mkdir(parents=True)
    (release / "artwork" / "questions_answers_YN").mkdir()
    (release / "artwork" / "questions_answers_YN" / "14777.txt").write_text(
        "Does this artwork belong to the type of religious?  Please answer yes or no.\tYes\n"
        "Does this artwork belong to the type of historical? Please answer yes or no.\tNo\n", encoding="utf-8")
    questions = write_jsonl(root / "llava_mme.jsonl", [
        {"question_id": "code_reasoning/0020.png", "image": "code_reasoning/0020.png",
         "text": "Is a python code shown in the picture?" + SHORT, "category": "code_reasoning"},
        {"question_id": "code_reasoning/0020.png", "image": "code_reasoning/0020.png",
         "text": "Is a c++ code shown in the picture?" + SHORT, "category": "code_reasoning"},
        {"question_id": "artwork/images/14777.jpg", "image": "artwork/images/14777.jpg",
         "text": "Does this artwork belong to the type of historical?" + SHORT, "category": "artwork"},
        {"question_id": "artwork/images/14777.jpg", "image": "artwork/images/14777.jpg",
         "text": "Does this artwork belong to the type of religious?" + SHORT, "category": "artwork"},
    ])
    return questions, release


def test_mme_reads_release_ground_truth_with_pairs(tmp_path):
    questions, release = mme_files(tmp_path)
    got = read_eval(questions, answers=release, format="mme")
    assert (got.metric, got.format) == ("mme", "mme")
    assert [s.id for s in got.samples] == ["code_reasoning/0020.png#1", "code_reasoning/0020.png#2",
                                           "artwork/images/14777.jpg#2", "artwork/images/14777.jpg#1"]
    assert [s.answers for s in got.samples] == [["Yes"], ["No"], ["No"], ["Yes"]]
    assert [s.task for s in got.samples] == ["code_reasoning", "code_reasoning", "artwork", "artwork"]
    assert [s.extra["pair"] for s in got.samples] == ["code_reasoning/0020.png"] * 2 + ["artwork/images/14777.jpg"] * 2
    assert got.samples[2].extra["category"] == "artwork"
    assert got.samples[2].question == "Does this artwork belong to the type of historical?" + SHORT
    assert got.samples[0].image == release / "code_reasoning" / "0020.png"  # images default to the release folder
    moved = read_eval(questions, answers=release, image_folder=tmp_path / "imgs", format="mme")
    assert moved.samples[3].image == tmp_path / "imgs" / "artwork" / "images" / "14777.jpg"


def test_mme_accepts_eval_tool_category_tables(tmp_path):
    questions, _ = mme_files(tmp_path)
    tables = tmp_path / "eval_tool" / "Your_Results"
    tables.mkdir(parents=True)
    (tables / "code_reasoning.txt").write_text(
        "0020.png\tIs a python code shown in the picture? Please answer yes or no.\tYes\n"
        "0020.png\tIs a c++ code shown in the picture? Please answer yes or no.\tNo\n", encoding="utf-8")
    (tables / "artwork.txt").write_text(
        "14777.jpg\tDoes this artwork belong to the type of religious? Please answer yes or no.\tYes\n"
        "14777.jpg\tDoes this artwork belong to the type of historical? Please answer yes or no.\tNo\n",
        encoding="utf-8")
    got = read_eval(questions, answers=tables, image_folder=tmp_path / "MME_Benchmark_release_version")
    assert got.format == "mme"
    assert [(s.id, s.answers[0]) for s in got.samples] == [
        ("code_reasoning/0020.png#1", "Yes"), ("code_reasoning/0020.png#2", "No"),
        ("artwork/images/14777.jpg#2", "No"), ("artwork/images/14777.jpg#1", "Yes")]


def test_mme_errors(tmp_path):
    questions, release = mme_files(tmp_path)
    error_of(lambda: read_eval(questions, format="mme"), str(questions), "--answers MME_Benchmark_release_version")
    unknown = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": "code_reasoning/0020.png", "image": "code_reasoning/0020.png",
         "text": "Is a java code shown in the picture?" + SHORT, "category": "code_reasoning"}])
    error_of(lambda: read_eval(unknown, answers=release, format="mme"),
             f"{unknown}:1:", "Is a java code shown in the picture?", str(release / "code_reasoning" / "0020.txt"))
    no_file = write_jsonl(tmp_path / "q3.jsonl", [
        {"question_id": "scene/Places365_val_00000001.jpg", "image": "scene/Places365_val_00000001.jpg",
         "text": "Is this picture captured in a place of greenhouse indoor?" + SHORT, "category": "scene"}])
    error_of(lambda: read_eval(no_file, answers=release, format="mme"), f"{no_file}:1:", "no ground truth", "--answers")
    (release / "code_reasoning" / "0021.txt").write_text("Is this python? Please answer yes or no.\tMaybe\n")
    bad = write_jsonl(tmp_path / "q4.jsonl", [
        {"question_id": "code_reasoning/0021.png", "image": "code_reasoning/0021.png",
         "text": "Is this python?" + SHORT, "category": "code_reasoning"}])
    error_of(lambda: read_eval(bad, answers=release, format="mme"), f"{release / 'code_reasoning' / '0021.txt'}:1:",
             "Yes or No")


# ---------------------------------------------------------------------------
# POPE: llava_pope_test.jsonl + coco/coco_pope_{category}.json

def pope_files(root: Path) -> tuple[Path, Path]:
    coco = root / "coco"
    write_jsonl(coco / "coco_pope_adversarial.json", [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
         "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a backpack in the image?",
         "label": "no"},
    ])
    write_jsonl(coco / "coco_pope_random.json", [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
         "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a car in the image?",
         "label": "no"},
    ])
    write_jsonl(coco / "coco_pope_popular.json", [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
         "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dining table in the image?",
         "label": "no"},
    ])
    questions = write_jsonl(root / "llava_pope_test.jsonl", [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
         "text": "Is there a snowboard in the image?" + SHORT, "category": "adversarial"},
        {"question_id": 2, "image": "COCO_val2014_000000310196.jpg",
         "text": "Is there a backpack in the image?" + SHORT, "category": "adversarial"},
        {"question_id": 10000002, "image": "COCO_val2014_000000310196.jpg",  # a subset: random's first is left out
         "text": "Is there a car in the image?" + SHORT, "category": "random"},
        {"question_id": 20000001, "image": "COCO_val2014_000000310196.jpg",
         "text": "Is there a snowboard in the image?" + SHORT, "category": "popular"},
        {"question_id": 20000002, "image": "COCO_val2014_000000310196.jpg",
         "text": "Is there a dining table in the image?" + SHORT, "category": "popular"},
    ])
    return questions, coco


def test_pope_matches_labels_by_category_and_question(tmp_path):
    questions, coco = pope_files(tmp_path)
    got = read_eval(questions, answers=coco, image_folder=tmp_path / "val2014", format="pope")
    assert (got.metric, got.format) == ("pope", "pope")
    assert [s.id for s in got.samples] == ["adversarial-1", "adversarial-2", "random-10000002",
                                           "popular-20000001", "popular-20000002"]
    assert [s.answers for s in got.samples] == [["yes"], ["no"], ["no"], ["yes"], ["no"]]
    assert [s.task for s in got.samples] == ["pope-adversarial", "pope-adversarial", "pope-random",
                                             "pope-popular", "pope-popular"]
    assert got.samples[2].extra == {"category": "random", "label_question_id": "2"}
    assert got.samples[2].question == "Is there a car in the image?" + SHORT
    assert got.samples[4].image == tmp_path / "val2014" / "COCO_val2014_000000310196.jpg"


def test_pope_single_label_file_and_positional_ids(tmp_path):
    _, coco = pope_files(tmp_path)
    # ids that follow neither numbering: LLaVA's positional pairing still finds the labels
    questions = write_jsonl(tmp_path / "mine.jsonl", [
        {"question_id": "a", "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
         "category": "popular"},
        {"question_id": "b", "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dining table in the image?",
         "category": "popular"},
    ])
    got = read_eval(questions, answers=coco / "coco_pope_popular.json")
    assert got.format == "pope" and [(s.id, s.answers[0]) for s in got.samples] == [("popular-a", "yes"),
                                                                                     ("popular-b", "no")]


def test_pope_errors(tmp_path):
    questions, coco = pope_files(tmp_path)
    error_of(lambda: read_eval(questions, format="pope"), str(questions), "--answers", "coco_pope_")
    (coco / "coco_pope_random.json").unlink()
    error_of(lambda: read_eval(questions, answers=coco, format="pope"), f"{questions}:3:", "'random'",
             "coco_pope_random.json")
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [
        {"question_id": 2, "image": "COCO_val2014_000000999999.jpg",  # label 2 is about another image
         "text": "Is there a backpack in the image?" + SHORT, "category": "adversarial"},
        {"question_id": 3, "image": "COCO_val2014_000000310196.jpg",
         "text": "Is there a backpack in the image?" + SHORT, "category": "adversarial"}])
    error_of(lambda: read_eval(wrong, answers=coco, format="pope"), f"{wrong}:1:", "question_id 2",
             str(coco / "coco_pope_adversarial.json"))
    no_category = write_jsonl(tmp_path / "nocat.jsonl", [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?"}])
    error_of(lambda: read_eval(no_category, answers=coco, format="pope"), f"{no_category}:1:", "category")
    write_jsonl(coco / "coco_pope_adversarial.json", [{"question_id": 1, "label": "maybe"}])
    error_of(lambda: read_eval(questions, answers=coco, format="pope"),
             f"{coco / 'coco_pope_adversarial.json'}:1:", "'label'", "maybe")


# ---------------------------------------------------------------------------
# horizon's own JSONL

def test_own_jsonl_metric_depends_on_answer_count(tmp_path):
    ten = write_jsonl(tmp_path / "vqa.jsonl", [
        {"id": "q1", "image": "img/a.png", "question": "What colour is the bus?", "answer": ["red"] * 9 + ["maroon"],
         "task": "colour"},
        {"id": "q2", "image": "img/b.png", "question": "How many dogs?", "answer": ["2"] * 10}])
    got = read_eval(ten)
    assert (got.format, got.metric) == ("jsonl", "vqa")
    assert [s.id for s in got.samples] == ["q1", "q2"] and got.samples[0].task == "colour"
    assert got.samples[0].image == tmp_path / "img" / "a.png" and got.samples[0].answers[-1] == "maroon"
    one = write_jsonl(tmp_path / "exact.jsonl", [
        {"id": "q1", "image": "a.png", "question": "What colour is the bus?", "answer": "red"},
        {"id": "q2", "image": "b.png", "question": "How many dogs?", "answer": ["2"] * 10}])
    got = read_eval(one, format="jsonl")
    assert got.metric == "exact" and got.samples[0].answers == ["red"]
    error_of(lambda: read_eval(one, answers=ten, format="jsonl"), str(one), "--answers")
    error_of(lambda: read_eval(one, image_folder=tmp_path, format="jsonl"), str(one), "--image-folder")


# ---------------------------------------------------------------------------
# auto-detection and general errors

def test_auto_detects_each_format(tmp_path):
    tq, ta = textvqa_files(tmp_path / "textvqa")
    mq, mr = mme_files(tmp_path / "mme")
    pq, pc = pope_files(tmp_path / "pope")
    own = write_jsonl(tmp_path / "own.jsonl", [{"id": "x", "image": "x.png", "question": "Q?", "answer": "A"}])
    assert read_eval(tq, answers=ta).format == "textvqa"
    assert read_eval(mq, answers=mr).format == "mme"
    assert read_eval(pq, answers=pc).format == "pope"
    assert read_eval(own).format == "jsonl"
    # the questions alone tell MME and POPE apart; without --answers they then ask for it
    error_of(lambda: read_eval(mq), str(mq), "--answers MME_Benchmark_release_version")
    error_of(lambda: read_eval(pq), str(pq), "--answers", "coco_pope_")


def test_auto_ambiguous_or_conflicting_asks_for_format(tmp_path):
    tq, _ = textvqa_files(tmp_path)
    error_of(lambda: read_eval(tq), str(tq), "--format", "--answers")
    _, coco = pope_files(tmp_path)
    mq, _ = mme_files(tmp_path)
    error_of(lambda: read_eval(mq, answers=coco), str(mq), "--format", "mme", "pope")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"qid": 1, "prompt": "hi"}])
    error_of(lambda: read_eval(odd), f"{odd}:1:", "--format")


def test_general_errors_are_one_line_and_name_the_file(tmp_path):
    error_of(lambda: read_eval(tmp_path / "missing.jsonl"), str(tmp_path / "missing.jsonl"), "--data")
    questions, annotations = textvqa_files(tmp_path)
    error_of(lambda: read_eval(questions, answers=annotations, format="gqa"), "--format", "'gqa'", "textvqa", "vqav2")
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text(json.dumps({"question_id": "a", "image": "a.jpg", "text": "Q?"}) + "\n{\"question_id\": \n")
    error_of(lambda: read_eval(malformed, answers=annotations, format="textvqa"), f"{malformed}:2:", "malformed JSON")
    error_of(lambda: read_eval(malformed, answers=annotations), f"{malformed}:2:", "malformed JSON")  # auto too
    keyless = write_jsonl(tmp_path / "keyless.jsonl", [{"question_id": "a", "image": "a.jpg"}])
    error_of(lambda: read_eval(keyless, answers=annotations, format="textvqa"), f"{keyless}:1:", "missing", "text")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    error_of(lambda: read_eval(empty), str(empty), "empty")
