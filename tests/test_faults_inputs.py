"""Faults in inputs and loading: images of every PIL mode, bad dataset lines, bad checkpoints, bad paths.

User errors end in one line and exit 2 with no traceback; under ``--on-error skip`` a sample that cannot be
prepared (read, processed, encoded, or longer than the model's context) is recorded and the run goes on.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from horizon.cli import main
from horizon.data import open_rgb, read_jsonl, to_rgb
from horizon.errors import HorizonError, SampleError
from horizon.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A one-layer llava and qwen2_5_vl, 2 x 2 visual grids: small enough to scan in seconds."""
    root = tmp_path_factory.mktemp("faults")
    return {arch: build_tiny(root / arch, arch=arch, grid=(2, 2), layers=1) for arch in ("llava", "qwen2_5_vl")}


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.startswith("horizon: error")], captured


def scan(model, data, out, *extra):
    return ["scan", "--model", model, "--data", data, "--out", out, "-q", *extra]


def write_data(root: Path, records: list[dict], tail: bytes = b"") -> Path:
    """A horizon JSONL file with a 16 x 16 image 'ok.png' next to it (16 px: a 2 x 2 grid for the tiny llava)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(root / "img" / "ok.png")
    base = {"image": "img/ok.png", "question": "what is the color of the shape?", "answer": "red"}
    path = root / "data.jsonl"
    path.write_bytes("".join(json.dumps({**base, **r}) + "\n" for r in records).encode() + tail)
    return path


def saved(img: Image.Image, fmt: str) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt)
    buf.seek(0)
    return Image.open(buf)


# -- case 6: every PIL mode to 8-bit RGB, against a hand-made 8-bit equivalent --------------------------------

GREY = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every 8-bit value once


def grey_rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=-1)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_images_are_scaled_not_clipped(mode):
    wide = GREY.astype(np.uint32) * 257  # v * 257 is the 16-bit value of the 8-bit value v
    if mode == "I;16":
        img = saved(Image.fromarray(wide.astype(np.uint16)), "PNG")  # a real 16-bit PNG, as PIL opens it
        assert img.mode == "I;16"
    elif mode == "I;16B":
        img = Image.frombuffer("I;16B", (16, 16), wide.astype(">u2").tobytes(), "raw", "I;16B", 0, 1)
    else:
        img = Image.fromarray(wide.astype(np.int32), mode="I")
    assert np.array_equal(np.asarray(to_rgb(img)), grey_rgb(GREY))


def test_sixteen_bit_rounds_to_nearest():
    values = np.array([[0, 128, 129, 65535, 1000]], dtype=np.uint16)
    got = np.asarray(to_rgb(Image.fromarray(values)))[..., 0]
    assert got.tolist() == [[int(v / 257 + 0.5) for v in values[0]]]  # 0, 0, 1, 255, 4


def test_float_image_in_unit_range():
    values = np.random.default_rng(1).random((8, 8)).astype(np.float32)
    img = saved(Image.fromarray(values, mode="F"), "TIFF")  # a float TIFF
    assert img.mode == "F"
    expected = np.array([[int(float(v) * 255 + 0.5) for v in row] for row in values], dtype=np.uint8)
    assert np.array_equal(np.asarray(to_rgb(img)), grey_rgb(expected))


@pytest.mark.parametrize("values, message", [([[0.0, 2.0]], r"values in \[0, 2\]"), ([[np.nan, 0.5]], "NaN")])
def test_float_image_out_of_range_is_refused(values, message):
    with pytest.raises(ValueError, match=message):
        to_rgb(Image.fromarray(np.array(values, dtype=np.float32), mode="F"))


def test_thirty_two_bit_integer_past_sixteen_bits_is_refused():
    with pytest.raises(ValueError, match="16-bit"):
        to_rgb(Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I"))


def test_palette_with_and_without_transparency_gives_the_palette_colours():
    palette = [255, 0, 0, 0, 0, 255, 10, 200, 30]
    for transparency in (None, 0, b"\x00\xff\x80"):
        img = Image.new("P", (3, 1))
        img.putpalette(palette + [0] * (768 - len(palette)))
        for x in range(3):
            img.putpixel((x, 0), x)
        if transparency is not None:
            img.info["transparency"] = transparency
        img = saved(img, "PNG")
        assert img.mode == "P"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL's palette-transparency warning would be noise on every sample
            got = np.asarray(to_rgb(img))
        assert got.reshape(-1).tolist() == palette  # alpha dropped, colours as the palette says


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_alpha_is_dropped_as_llava_convert_rgb_does(mode):
    rgb = (np.random.default_rng(2).random((4, 4, 3)) * 255).astype(np.uint8)
    alpha = np.zeros((4, 4), dtype=np.uint8)  # fully transparent: compositing would change every pixel
    if mode == "RGBA":
        img, expected = Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), rgb
    elif mode == "LA":
        img, expected = Image.fromarray(np.dstack([rgb[..., 0], alpha]), mode="LA"), grey_rgb(rgb[..., 0])
    else:
        colours = [tuple(c) for c in rgb.reshape(-1, 3)]
        img = Image.new("PA", (4, 4))
        img.putpalette([v for c in colours for v in c] + [0] * (768 - 3 * len(colours)))
        img.putdata([(i, 0) for i in range(16)])
        expected = rgb
    assert np.array_equal(np.asarray(to_rgb(img)), expected)


def test_other_modes_match_their_eight_bit_equivalents():
    grey = Image.fromarray(GREY)
    assert np.array_equal(np.asarray(to_rgb(grey)), grey_rgb(GREY))
    bits = Image.fromarray(GREY >= 128).convert("1")
    assert np.array_equal(np.asarray(to_rgb(bits)), grey_rgb(np.where(GREY >= 128, 255, 0).astype(np.uint8)))
    cmyk = Image.frombytes("CMYK", (2, 1), bytes([0, 0, 0, 0, 255, 0, 255, 0]))  # white, then green
    assert np.asarray(to_rgb(cmyk)).tolist() == [[[255, 255, 255], [0, 255, 0]]]
    ycbcr = Image.frombytes("YCbCr", (2, 1), bytes([255, 128, 128, 0, 128, 128]))  # white, black
    assert np.asarray(to_rgb(ycbcr)).tolist() == [[[255, 255, 255], [0, 0, 0]]]


def test_sixteen_bit_png_scans_as_its_eight_bit_twin(tiny, tmp_path):
    """Through open_rgb, as scan opens images: a 16-bit PNG is the 8-bit image it came from."""
    Image.fromarray(GREY.astype(np.uint16) * 257).save(tmp_path / "16.png")
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "16.png")), grey_rgb(GREY))
    data = write_data(tmp_path, [{"id": "a", "image": "16.png"}])
    (sample,) = read_jsonl(data)
    assert np.asarray(sample.load_image()).mean() == pytest.approx(GREY.mean())  # was 255: clipped white


# -- case 8: a prompt longer than the model's context -------------------------------------------------------

def test_prompt_past_the_context_is_refused_in_scan_and_prune_eval(tiny, tmp_path, capsys):
    long = "red " * 5000
    data = write_data(tmp_path, [{"id": "short"}, {"id": "long", "question": long}])
    code, err, _ = run_cli(capsys, *scan(tiny["llava"], data, tmp_path / "stop"))
    assert code == 2 and len(err) == 1
    assert "'long'" in err[0] and "longer than the model's 4096 positions" in err[0]
    n = int(err[0].split("prompt is ")[1].split(" tokens")[0])
    assert n > 4096  # the count is the real prompt: check it independently with the processor
    import horizon

    vlm = horizon.load(tiny["llava"], device="cpu")
    (_, sample) = read_jsonl(data)
    prompt = vlm.adapter.prompt(vlm.processor, long, 1)
    assert n == vlm.adapter.encode(vlm.processor, sample.load_images(), prompt)["input_ids"].shape[1]
    assert pd.read_parquet(tmp_path / "stop" / "samples").sample_id.tolist() == ["short"]  # kept

    code, _, out = run_cli(capsys, *scan(tiny["llava"], data, tmp_path / "skip", "--on-error", "skip"))
    assert code == 0 and "1 of 2 samples ok" in out.out
    status = pd.read_parquet(tmp_path / "skip" / "samples").set_index("sample_id").status
    assert status["short"] == "ok" and "longer than the model's 4096 positions" in status["long"]

    code, _, _ = run_cli(capsys, "prune-eval", "--model", tiny["llava"], "--data", data, "--out", tmp_path / "pe",
                         "--schedule", "none", "--on-error", "skip", "-q")
    rows = {r["sample_id"]: r for r in map(json.loads, (tmp_path / "pe" / "predictions.jsonl").read_text().splitlines())}
    assert code == 0 and rows["short"]["status"] == "ok"
    assert "longer than the model's 4096 positions" in rows["long"]["status"]


def test_answer_pushing_past_the_context_is_refused(tiny, tmp_path, capsys):
    """The scanned sequence is prompt + answer: an answer that crosses the limit is counted."""
    import horizon
    from horizon.scan import answer_ids_for, encode_sample, first_text_token

    vlm = horizon.load(tiny["llava"], device="cpu")
    data = write_data(tmp_path, [{"id": "a"}])
    sample = read_jsonl(data)[0]
    inputs, prompt = encode_sample(vlm, sample)
    prompt_len = inputs["input_ids"].shape[1]
    answer = answer_ids_for(vlm, sample, prompt)
    fed = first_text_token(vlm.tokenizer, answer) + 1  # answer_span first: up to the first token carrying text
    vlm.language_model.config.max_position_embeddings = prompt_len  # the prompt fits, the answer does not
    with pytest.raises(SampleError, match=rf"prompt with its answer is {prompt_len + fed} tokens .*model's "
                                          rf"{prompt_len} positions"):
        horizon.scan(vlm, data, layers="0", progress=False, answer_span="first")


def test_prune_eval_refuses_an_answer_that_could_run_past_the_context(tiny, tmp_path):
    """Generated tokens take positions: a prompt that fits with no room for --max-new-tokens more is refused."""
    import horizon
    from horizon.prune.evaluate import prune_eval
    from horizon.scan import encode_sample

    vlm = horizon.load(tiny["llava"], device="cpu")
    data = write_data(tmp_path, [{"id": "a"}])
    prompt_len = encode_prompt_len = encode_sample(vlm, read_jsonl(data)[0])[0]["input_ids"].shape[1]
    vlm.language_model.config.max_position_embeddings = prompt_len + 3  # room for 3 answer tokens
    fits = prune_eval(vlm, data, max_new_tokens=3, on_error="skip", progress=False)
    assert fits.predictions.status.tolist() == ["ok"]
    past = prune_eval(vlm, data, max_new_tokens=4, on_error="skip", progress=False)
    (status,) = past.predictions.status
    assert f"prompt is {encode_prompt_len} tokens" in status and "may take 4 more (--max-new-tokens)" in status
    assert f"model's {prompt_len + 3} positions" in status


# -- --on-error skip skips what cannot be prepared ----------------------------------------------------------

def bomb_png(path: Path) -> None:
    """A small PNG whose header claims 100000 x 100000 pixels: PIL refuses it at open (over twice its limit)."""
    data = bytearray(saved(Image.new("RGB", (4, 4)), "PNG").fp.getvalue())
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", 100000, 100000)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    path.write_bytes(bytes(data))


def test_skip_records_bomb_bad_utf8_line_and_processor_rejection(tiny, tmp_path, capsys):
    bad_line = b'{"id": "bad", "question": "caf\xe9"}\n'  # Latin-1, not UTF-8
    data = write_data(tmp_path, [{"id": "ok"}, {"id": "bomb", "image": "img/bomb.png"},
                                 {"id": "thin", "image": "img/thin.png"}], tail=bad_line)
    column = bad_line.index(b"\xe9") + 1  # every character before it is ASCII: bytes and characters agree
    bomb_png(tmp_path / "img" / "bomb.png")
    Image.new("RGB", (400, 1), (9, 9, 9)).save(tmp_path / "img" / "thin.png")  # aspect ratio 400: Qwen refuses
    code, _, out = run_cli(capsys, *scan(tiny["qwen2_5_vl"], data, tmp_path / "run", "--on-error", "skip"))
    assert code == 0 and "1 of 4 samples ok" in out.out
    status = pd.read_parquet(tmp_path / "run" / "samples").set_index("sample_id").status
    assert status["ok"] == "ok"
    assert "bomb.png" in status["bomb"] and "decompression bomb" in status["bomb"]
    assert "processor rejected it" in status["thin"] and "aspect ratio" in status["thin"]
    assert status["line-4"] == f"error: {data}:4: not UTF-8 text (byte 0xe9 at column {column}); save the file as UTF-8"

    # the same samples under --on-error stop: one line each, no traceback
    for bad in ("bomb", "thin"):
        one = write_data(tmp_path / bad, [{"id": bad, "image": str(tmp_path / "img" / f"{bad}.png")}])
        code, err, _ = run_cli(capsys, *scan(tiny["qwen2_5_vl"], one, tmp_path / f"stop-{bad}"))
        assert code == 2 and len(err) == 1 and f"sample {bad!r}" in err[0]


def test_non_utf8_line_under_stop_names_file_and_line(tmp_path):
    bad_line = b'{"id": "b", "question": "\xff"}\n'
    data = write_data(tmp_path, [{"id": "a"}], tail=bad_line)
    column = bad_line.index(b"\xff") + 1
    with pytest.raises(HorizonError, match=rf"^{data}:2: not UTF-8 text \(byte 0xff at column {column}\)"):
        read_jsonl(data)
    from horizon.benchmarks.files import json_lines

    with pytest.raises(HorizonError, match=rf"^{data}:2: not UTF-8 text"):
        json_lines(data)


def test_byte_order_mark_is_allowed(tmp_path):
    data = write_data(tmp_path, [{"id": "a"}])
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    assert [s.id for s in read_jsonl(data)] == ["a"]


# -- dataset lines ------------------------------------------------------------------------------------------

def test_null_task_is_the_default_task(tmp_path):
    data = write_data(tmp_path, [{"id": "a", "task": None}, {"id": "b"}, {"id": "c", "task": "ocr"}])
    assert [s.task for s in read_jsonl(data)] == ["default", "default", "ocr"]
    bad = write_data(tmp_path / "bad", [{"id": "a", "task": ["ocr"]}])
    with pytest.raises(HorizonError, match=rf"^{bad}:1: 'task' must be a non-empty string"):
        read_jsonl(bad)


def test_malformed_json_gives_the_real_column(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "a",   "image": oops}\n')
    column = data.read_text().index("oops") + 1
    with pytest.raises(HorizonError, match=rf"malformed JSON \(Expecting value at column {column}\)"):
        read_jsonl(data)


# -- checkpoints and paths ----------------------------------------------------------------------------------

def broken_copy(src: Path, dst: Path, how: str) -> Path:
    import shutil

    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    if how == "garbage":
        weights.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "no-tokenizer":
        (dst / "tokenizer.json").unlink()
        (dst / "tokenizer_config.json").unlink()
    return dst


@pytest.mark.parametrize("how, message", [
    ("garbage", "model.safetensors is not a valid safetensors file"),
    ("truncated", "model.safetensors is not a valid safetensors file"),
    ("no-tokenizer", "no tokenizer files"),
])
def test_broken_checkpoint_is_one_line(tiny, tmp_path, capsys, how, message):
    model = broken_copy(tiny["llava"], tmp_path / how, how)
    data = write_data(tmp_path, [{"id": "a"}])
    code, err, captured = run_cli(capsys, *scan(model, data, tmp_path / "run"))
    assert code == 2 and len(err) == 1 and message in err[0] and str(model) in err[0]
    assert "Traceback" not in captured.err


def test_symlink_loops_are_named(tiny, tmp_path, capsys):
    loop = tmp_path / "loop"
    os.symlink(tmp_path / "loop2", loop)
    os.symlink(loop, tmp_path / "loop2")
    data = write_data(tmp_path / "d", [{"id": "a"}, {"id": "b", "image": str(loop)}])
    for args in (scan(loop, data, tmp_path / "r1"), scan(tiny["llava"], loop, tmp_path / "r2"),
                 scan(tiny["llava"], data, tmp_path / "r3")):
        code, err, _ = run_cli(capsys, *args)
        assert code == 2 and len(err) == 1 and "symbolic link loop" in err[0] and "not found" not in err[0]
    assert "sample 'b'" in err[0]  # the image path, as a sample error
    code, err, _ = run_cli(capsys, "prune-eval", "--model", tiny["llava"], "--data", loop, "--out", tmp_path / "pe",
                           "--schedule", "none", "-q")
    assert code == 2 and len(err) == 1 and "symbolic link loop" in err[0]


@pytest.mark.parametrize("model", ["./chekpoints/tiny", "/abs/missing/dir", "../x", "a/b/c"])
def test_mistyped_local_path_is_no_such_directory(tmp_path, capsys, model):
    data = write_data(tmp_path, [{"id": "a"}])
    code, err, _ = run_cli(capsys, *scan(model, data, tmp_path / "run"))
    assert code == 2 and err == [f"horizon: error: model directory not found: {model} (no such directory)"]
    assert not (tmp_path / "run" / "run.json").exists()


def test_remote_code_refusal_names_the_option(tiny, tmp_path, capsys):
    import shutil

    import horizon

    model = tmp_path / "custom"
    shutil.copytree(tiny["llava"], model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "custom_vlm"
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    code, err, _ = run_cli(capsys, *scan(model, write_data(tmp_path, [{"id": "a"}]), tmp_path / "run"))
    assert code == 2 and len(err) == 1 and "--trust-remote-code" in err[0]
    with pytest.raises(HorizonError, match=r"trust_remote_code=True \(API\)"):
        horizon.load(model, device="cpu")


def test_subprocess_prints_one_line_and_no_traceback(tiny, tmp_path):
    model = broken_copy(tiny["llava"], tmp_path / "m", "truncated")
    data = write_data(tmp_path, [{"id": "a"}])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for args in (scan(model, data, tmp_path / "r1"), scan("./chekpoints/tiny", data, tmp_path / "r2")):
        proc = subprocess.run([sys.executable, "-m", "horizon", *map(str, args)], capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len([l for l in proc.stderr.splitlines() if l.startswith("horizon: error")]) == 1
