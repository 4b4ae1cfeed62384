"""A model loaded through accelerate's dispatch (a device map) gives the same scores and answers as a plain load.

This machine has one CPU and no GPU, so the map sends some modules to
"disk": their weights wait on the meta device and a dispatch hook loads them
on every call -- the same hook path that moves a multi-GPU model's tensors
between devices. Every read of a module's weights or device by horizon has to
go through it, or the scan fails on meta tensors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import horizon
from horizon.cli import main
from horizon.prune import prune_eval
from helpers import error_of

from conftest import CONTRACT


def offloading_map(vlm) -> dict[str, str]:
    """Every top-level module on the CPU except every other decoder layer, the final norm and (untied) head: on disk."""
    lm_path = vlm.adapter.language_model_path()
    mapping = {f"model.{name}": "cpu" for name, _ in vlm.hf.model.named_children() if f"model.{name}" != lm_path}
    mapping |= {f"model.{name}": "cpu" for name, _ in vlm.hf.model.named_parameters(recurse=False)}  # image_newline
    for name, _ in vlm.language_model.named_children():
        if name != "layers":
            mapping[f"{lm_path}.{name}"] = "disk" if vlm.language_model.get_submodule(name) is vlm.adapter.final_norm(
                vlm.language_model) else "cpu"
    for i in range(vlm.n_layers):
        mapping[f"{lm_path}.layers.{i}"] = "disk" if i % 2 else "cpu"
    # a head tied to the input embeddings shares their weights, so it goes where they go
    tied = vlm.lm_head.weight is vlm.hf.get_input_embeddings().weight
    mapping[vlm.adapter.lm_head_path()] = "cpu" if tied else "disk"
    return mapping


@pytest.mark.parametrize("name", CONTRACT)
def test_dispatched_model_scores_and_prunes_like_a_plain_load(checkpoints, models, dataset, tmp_path, name):
    plain, data = models[name], dataset(name, 2)
    mapping = offloading_map(plain)
    mapped = horizon.load(checkpoints[name], dtype="float32", device="cpu", device_map=mapping,
                          offload_folder=tmp_path / "offload")
    hooked = [n for n, m in mapped.hf.named_modules() if hasattr(m, "_hf_hook")]
    assert hooked, "the model was not dispatched"
    assert any(p.device.type == "meta" for p in mapped.layers[1].parameters())  # really offloaded
    for protocol in ("remove", "keep"):
        a = horizon.scan(plain, data, group=1, protocol=protocol, progress=False)
        b = horizon.scan(mapped, data, group=1, protocol=protocol, progress=False)
        assert list(a.samples.clean_pred) == list(b.samples.clean_pred)
        assert len(a.scores) == len(b.scores) > 0
        assert np.abs(a.scores.value.to_numpy() - b.scores.value.to_numpy()).max() <= 1e-6, protocol
    for schedule in ("divprune@0:50%,random@2:25%", "fastv@1:40%", "dart@1:8"):
        x = prune_eval(plain, data, schedule=schedule, seeds=1, progress=False).predictions
        y = prune_eval(mapped, data, schedule=schedule, seeds=1, progress=False).predictions
        assert list(x.prediction) == list(y.prediction) and list(x.visual_per_layer) == list(y.visual_per_layer)


def test_cli_device_map_file_and_errors(checkpoints, models, dataset, tmp_path, capsys):
    name = "llava"
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(offloading_map(models[name])))
    data = dataset(name, 1)
    args = ["scan", "--model", str(checkpoints[name]), "--data", str(data), "--group", "2", "-q", "--dtype", "float32"]
    assert main([*args, "--out", str(tmp_path / "a"), "--device", "cpu", "--device-map", str(mapping),
                 "--offload-folder", str(tmp_path / "off")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    from horizon.io.runs import read_run

    a, b = read_run(tmp_path / "a"), read_run(tmp_path / "b")
    assert np.abs(a["scores"].value.to_numpy() - b["scores"].value.to_numpy()).max() <= 1e-6
    assert a["config"]["device_map"] == json.loads(mapping.read_text()) and b["config"]["device_map"] is None
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "c"), "--device-map", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device-map" in err[0] and "file not found" in err[0]
    error_of(lambda: horizon.load(checkpoints[name], device_map="everywhere"), "--device-map must be one of", "auto")
