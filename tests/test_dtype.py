"""bfloat16 runs and stays within the documented tolerance of float32 (README, "Precision").

Documented tolerance: per metric, every bf16 score is within 10% of the largest
|float32 score| of that metric, and the two agree with Pearson r >= 0.98.
Scores are stored as float32 whatever the model dtype.
"""

import numpy as np
import pytest

import horizon


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_bfloat16_within_tolerance_of_float32(checkpoints, models, dataset, name):
    data = dataset(name, 3)
    metrics = ("kl", "dlogp", "dprob")
    ref = horizon.scan(models[name], data, metrics=metrics, progress=False).scores
    bf16 = horizon.load(checkpoints[name], dtype="bfloat16", device="cpu")
    assert bf16.dtype.is_floating_point and str(bf16.dtype) == "torch.bfloat16"
    got = horizon.scan(bf16, data, metrics=metrics, progress=False).scores
    assert got.value.dtype == np.float32
    key = ["sample_id", "layer", "group", "metric"]
    ref, got = ref.sort_values(key).reset_index(drop=True), got.sort_values(key).reset_index(drop=True)
    assert ref[key].equals(got[key])
    for metric in metrics:
        x = ref[ref.metric == metric].value.to_numpy(np.float64)
        y = got[got.metric == metric].value.to_numpy(np.float64)
        assert np.abs(x - y).max() <= 0.10 * np.abs(x).max(), metric
        assert np.corrcoef(x, y)[0, 1] >= 0.98, metric
