"""Bad input: one line naming the culprit, non-zero exit, no traceback, no work lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from horizon.cli import main
from horizon.errors import HorizonError
from horizon.models import load


def run_cli(capsys, *args):
    code = main(list(args))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("horizon: error")]
    return code, err


def scan(ckpt, data, out, *extra):
    return ["scan", "--model", str(ckpt), "--data", str(data), "--out", str(out), "-q", *extra]


def edit_line(path, index, **changes):
    lines = path.read_text().splitlines()
    obj = json.loads(lines[index])
    obj.update(changes)
    lines[index] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")


def test_missing_image_stops_with_one_line_and_keeps_completed_samples(checkpoints, dataset, tmp_path, capsys):
    data = dataset("llava", 3)
    edit_line(data, 1, image="img/nope.png")
    code, err = run_cli(capsys, *scan(checkpoints["llava"], data, tmp_path / "run"))
    assert code == 2 and len(err) == 1
    assert "'q1'" in err[0] and "nope.png" in err[0] and "not found" in err[0]
    done = pd.read_parquet(tmp_path / "run" / "samples")
    assert done.sample_id.tolist() == ["q0"]  # the completed sample stays on disk


def test_unreadable_image(checkpoints, dataset, tmp_path, capsys):
    data = dataset("llava", 1)
    (data.parent / "img" / "0.png").write_bytes(b"this is not a png")
    code, err = run_cli(capsys, *scan(checkpoints["llava"], data, tmp_path / "run"))
    assert code == 2 and len(err) == 1 and "cannot read image" in err[0] and "0.png" in err[0]


def test_malformed_jsonl_line_names_file_and_line(checkpoints, dataset, tmp_path, capsys):
    data = dataset("llava", 3)
    lines = data.read_text().splitlines()
    lines[1] = '{"id": "q1", "image": '
    data.write_text("\n".join(lines) + "\n")
    code, err = run_cli(capsys, *scan(checkpoints["llava"], data, tmp_path / "run"))
    assert code == 2 and len(err) == 1 and f"{data}:2" in err[0] and "malformed JSON" in err[0]


def test_missing_key_and_empty_answer(checkpoints, dataset, tmp_path, capsys):
    data = dataset("llava", 2)
    edit_line(data, 0, answer="")
    code, err = run_cli(capsys, *scan(checkpoints["llava"], data, tmp_path / "a"))
    assert code == 2 and len(err) == 1 and "'q0'" in err[0] and "empty or only whitespace" in err[0]
    lines = data.read_text().splitlines()
    obj = json.loads(lines[1]); del obj["question"]; lines[1] = json.dumps(obj)
    data.write_text("\n".join(lines) + "\n")
    code, err = run_cli(capsys, *scan(checkpoints["llava"], data, tmp_path / "b"))
    assert code == 2 and len(err) == 1 and f"{data}:2" in err[0] and "question" in err[0]


@pytest.mark.parametrize("layers, message", [("7", "layer 7 out of range"), ("0:9", "past the model"),
                                             ("a,b", "expected all")])
def test_bad_layers(checkpoints, dataset, tmp_path, capsys, layers, message):
    code, err = run_cli(capsys, *scan(checkpoints["llava"], dataset("llava", 1), tmp_path / "run", "--layers", layers))
    assert code == 2 and len(err) == 1 and message in err[0]


def test_unknown_architecture_and_missing_model(tmp_path, dataset, capsys):
    ckpt = tmp_path / "gpt2"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    code, err = run_cli(capsys, *scan(ckpt, dataset("llava", 1), tmp_path / "run"))
    assert code == 2 and len(err) == 1
    assert "unsupported architecture GPT2LMHeadModel" in err[0] and "llava" in err[0] and "qwen2_5_vl" in err[0]
    code, err = run_cli(capsys, *scan(tmp_path / "nowhere", dataset("llava", 1), tmp_path / "run2"))
    assert code == 2 and len(err) == 1 and "nowhere" in err[0]


def test_on_error_skip_records_and_goes_on(checkpoints, dataset, tmp_path, capsys):
    data = dataset("llava", 4)
    edit_line(data, 1, image="img/missing.png")
    edit_line(data, 2, answer="   ")
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines + ["not json"]) + "\n")
    assert main(scan(checkpoints["llava"], data, tmp_path / "run", "--on-error", "skip")) == 0
    samples = pd.read_parquet(tmp_path / "run" / "samples").set_index("sample_id")
    assert samples.loc["q0", "status"] == "ok" and samples.loc["q3", "status"] == "ok"
    assert "not found" in samples.loc["q1", "status"] and "only whitespace" in samples.loc["q2", "status"]
    assert "malformed JSON" in samples.loc["line-5", "status"]
    printed = capsys.readouterr().out
    assert "2 of 5 samples ok" in printed and "skipped 3 samples (status error): q1 (image file not found" in printed


def test_console_script_prints_no_traceback(checkpoints, dataset, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "horizon.cli", *scan(checkpoints["llava"], dataset("llava", 1),
                           tmp_path / "run", "--layers", "99")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if "error" in l.lower()]
    assert errors == ["horizon: error: layer 99 out of range: the model has 3 decoder layers (0..2)"]


def test_pickle_weights_need_opt_in(tmp_path):
    from horizon.tiny import build_tiny
    from transformers import AutoModelForImageTextToText

    ckpt = build_tiny(tmp_path / "m", arch="llava", grid=(2, 2), layers=1)
    model = AutoModelForImageTextToText.from_pretrained(ckpt)
    (ckpt / "model.safetensors").unlink()
    torch.save(model.state_dict(), ckpt / "pytorch_model.bin")
    with pytest.raises(HorizonError, match="allow_unsafe_weights"):
        load(ckpt, device="cpu")
    loaded = load(ckpt, device="cpu", allow_unsafe_weights=True)
    assert torch.equal(loaded.hf.lm_head.weight, model.lm_head.weight)
