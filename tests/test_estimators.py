"""The gradient estimator: attention gates whose closed end point is the engine's removal, and whose derivatives
are what finite differences of the gated model give."""

from __future__ import annotations

import json

import pytest
import torch

import horizon
from horizon.ablation import Ablation, clean_pass, run_ablations
from horizon.cli import main
from horizon.data import read_jsonl
from horizon.estimators import estimate_remove, gate_gradients, gated_logprobs
from horizon.groups import tile
from horizon.io.runs import HASHED_KEYS, config_hash, read_run
from horizon.scan import answer_ids_for, append_answer, encode_sample, first_text_token
from horizon.scores import kl_divergence

from helpers import error_of

pytestmark = pytest.mark.usefixtures("one_thread")


def prepared(vlm, data):
    """A sample's clean pass, 2x2 groups and scored answer token, as scan builds them."""
    sample = read_jsonl(data)[0]
    inputs, prompt = encode_sample(vlm, sample)
    answer = answer_ids_for(vlm, sample, prompt)
    first = first_text_token(vlm.tokenizer, answer)
    full = append_answer(inputs, answer[: first + 1])
    with torch.no_grad():
        clean = clean_pass(vlm, full, [inputs["input_ids"].shape[1] - 1 + first])
    groups = tile(vlm.adapter.grids(vlm.hf, full), 2)
    return clean, groups, torch.tensor(answer[first: first + 1])


def closed(vlm, clean, layer, positions, value=-torch.inf):
    gates = torch.zeros(vlm.n_layers, clean.seq_len, dtype=torch.float64)
    gates[layer:, list(positions)] = value
    return gates


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl", "qwen3_vl", "gemma3"])
def test_closed_gates_are_the_engines_removal(models, dataset, name):
    """Gates at their closed end point (log a = -inf from layer l on) give the removal the engine computes."""
    vlm = models[name]
    clean, groups, _ = prepared(vlm, dataset(name, 1))
    ablations = [Ablation(l, g.positions) for l in range(vlm.n_layers) for g in (groups[0], groups[len(groups) // 2])]
    with torch.no_grad():
        exact = {i: q for idx, logq in run_ablations(vlm, clean, ablations, 8, True) for i, q in zip(idx, logq)}
        for i, a in enumerate(ablations):
            gated = gated_logprobs(vlm, clean, closed(vlm, clean, a.layer, a.removed))
            assert (gated - exact[i]).abs().max() < 2e-5, (a.layer, a.removed)
        # open gates: the clean distribution
        assert (gated_logprobs(vlm, clean, closed(vlm, clean, 0, [], 0.0)) - clean.scored_logprobs()).abs().max() < 2e-5


def test_gate_gradients_equal_finite_differences(checkpoints, dataset):
    # float64 weights: finite differences far finer than in float32
    vlm = horizon.load(checkpoints["llava"], dtype=torch.float64, device="cpu")
    clean, groups, target = prepared(vlm, dataset("llava", 1))
    grads = gate_gradients(vlm, clean, target)
    layers = list(range(vlm.n_layers))
    estimate = estimate_remove(grads, groups, layers, ("dlogp",))["dlogp"].view(len(layers), len(groups))
    def slope(positions, layer, eps):  # central difference of log p(y) in a at a = 1
        at = [gated_logprobs(vlm, clean, closed(vlm, clean, layer, positions, float(torch.log1p(torch.tensor(e)))))
              for e in (eps, -eps)]
        return float(at[0][0, target[0]] - at[1][0, target[0]]) / (2 * eps)

    with torch.no_grad():
        for layer in layers:
            for gi in (0, 3, len(groups) - 1):
                positions = groups[gi].positions
                # Richardson: the eps^2 term of two central differences cancels. The Llama norm computes in
                # float32 even in a float64 model, so log p carries ~1e-7 of rounding: eps stays large.
                derivative = (4 * slope(positions, layer, 0.02) - slope(positions, layer, 0.04)) / 3
                assert float(estimate[layer, gi]) == pytest.approx(derivative, abs=1e-5, rel=1e-3)
    assert grads.logp == pytest.approx(float(clean.scored_logprobs()[0, target[0]]), abs=1e-6)


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl", "gemma3"])
def test_saturation_fix_is_the_exact_attention_change_linearised_after_it(models, dataset, name):
    """Per layer j and group g, the corrected estimate is -<d log p / d(attention output of j), the exact change
    of that output when g's keys leave layer j's softmax>: the change measured here by closing g's gates in layer
    j alone and reading the attention output the model computes. Without saturation (m -> 0) it would be the
    plain gate gradient, which is the gates' linearisation of the same change."""
    vlm = models[name]
    clean, groups, target = prepared(vlm, dataset(name, 1))
    grads = gate_gradients(vlm, clean, target, groups=groups)
    gates = torch.zeros(vlm.n_layers, clean.seq_len, dtype=torch.float64, requires_grad=True)
    outputs: list[torch.Tensor] = []
    with torch.enable_grad():
        logp = gated_logprobs(vlm, clean, gates, outputs)
        heads = torch.autograd.grad(logp[0, target[0]], outputs)
    with torch.no_grad():
        for layer in range(vlm.n_layers):
            for gi in (0, len(groups) // 2, len(groups) - 1):
                only = torch.zeros_like(gates)
                only[layer, list(groups[gi].positions)] = -torch.inf
                removed: list[torch.Tensor] = []
                gated_logprobs(vlm, clean, only, removed)
                change = (removed[layer] - outputs[layer]).double()
                expected = -float((heads[layer].double() * change).sum())
                assert float(grads.answer_groups[layer, gi]) == pytest.approx(expected, rel=1e-3, abs=1e-7)
        # the linear part alone (mass 0) is the gate gradient summed over the group
        member = torch.zeros(clean.seq_len, dtype=torch.float64)
        member[list(groups[0].positions)] = 1.0
        plain = grads.answer @ member
        assert not torch.allclose(grads.answer_groups[:, 0], plain)  # the correction changes something ...
        assert torch.allclose(grads.answer_groups[:, 0], plain, rtol=0.5, atol=1e-3)  # ... a little, unsaturated


def test_the_output_softmax_of_the_estimate_is_computed_exactly(models, dataset):
    """With the fix, scores come from the clean logits moved by the followed tokens' estimated changes: checked
    against log_softmax of the whole moved logit vector, computed here directly for every (layer, group)."""
    vlm = models["llava"]
    clean, groups, target = prepared(vlm, dataset("llava", 1))
    grads = gate_gradients(vlm, clean, target, kl_tokens=4, groups=groups)
    layers = list(range(vlm.n_layers))
    got = estimate_remove(grads, groups, layers, ("dlogp", "dprob", "kl"))
    logp = grads.clean_logprobs.double()
    tokens = grads.logit_tokens
    assert int(tokens[0, 0]) == int(target[0]) and len(set(tokens[0].tolist())) >= 5  # the answer and the top 4
    changes = grads.logit_groups.flip(2).cumsum(2).flip(2)  # (m, T, L, G): removal from layer l on
    linear = -grads.position_groups.flip(1).cumsum(1).flip(1)  # (m, L, G): first-order d log p(y)
    followed = torch.zeros(logp.shape[-1], dtype=torch.bool)
    followed[tokens[0]] = True
    p = logp[0].exp()
    for li in layers:
        for gi in range(len(groups)):
            # the other tokens all move by the p-weighted mean move that first order leaves them
            dz = torch.zeros(logp.shape[-1], dtype=torch.float64)
            dz[tokens[0]] = changes[0, :, li, gi]
            mean = (changes[0, 0, li, gi] - linear[0, li, gi] - (p * dz).sum()) / p[~followed].sum()
            moved = logp.clone()
            moved[0, ~followed] += mean
            for r in range(tokens.shape[1]):
                moved[0, tokens[0, r]] = logp[0, tokens[0, r]] + changes[0, r, li, gi]  # repeats write the same
            q = torch.log_softmax(moved, -1)
            i = li * len(groups) + gi
            assert float(got["dlogp"][i]) == pytest.approx(float(logp[0, target[0]] - q[0, target[0]]), abs=1e-9)
            assert float(got["dprob"][i]) == pytest.approx(float(logp[0, target[0]].exp() - q[0, target[0]].exp()),
                                                           abs=1e-9)
            assert float(got["kl"][i]) == pytest.approx(float(kl_divergence(logp[None], q[None])[0]), abs=1e-9)


def test_kl_second_order_matches_the_exact_kl_of_a_small_step(models, dataset):
    """With every token in the sum, 1/2 sum_v p_v (d log p_v)^2 is KL's second-order term: a step of the gates by
    -eps gives KL ~ eps^2 times the estimate (the estimate is the full step, eps = 1)."""
    vlm = models["llava"]
    clean, groups, target = prepared(vlm, dataset("llava", 1))
    vocab = clean.scored_logprobs().shape[-1]
    grads = gate_gradients(vlm, clean, target, kl_tokens=vocab)
    estimate = estimate_remove(grads, groups, [0, 1], ("kl",))["kl"].view(2, len(groups))
    eps = 1e-2
    with torch.no_grad():
        p = gated_logprobs(vlm, clean, closed(vlm, clean, 0, [], 0.0))
        for layer in (0, 1):
            for gi in (0, len(groups) - 1):
                q = gated_logprobs(vlm, clean, closed(vlm, clean, layer, groups[gi].positions,
                                                      float(torch.log1p(torch.tensor(-eps)))))
                kl = float(kl_divergence(p[None], q[None])[0])
                assert kl == pytest.approx(eps**2 * float(estimate[layer, gi]), rel=0.05, abs=1e-12)


def test_scan_with_the_gradient_estimator_says_so(models, checkpoints, dataset, tmp_path, capsys):
    vlm, data = models["llava"], dataset("llava", 2)
    run = horizon.scan(vlm, data, out=tmp_path / "run", estimator="gradient", metrics=("dlogp", "dprob", "kl"),
                       group=2, progress=False)
    config = json.loads((tmp_path / "run" / "run.json").read_text())
    assert config["estimator"] == "gradient" and config["estimated"] is True and "gradient" in config["estimator_method"]
    # the stored scores are estimate_remove's, in the engine's layer-major order
    clean, groups, target = prepared(vlm, data)
    grads = gate_gradients(vlm, clean, target, kl_tokens=8, groups=groups)  # the saturation fix: the default
    expected = estimate_remove(grads, groups, list(range(vlm.n_layers)), ("dlogp", "dprob", "kl"))
    scores = run.scores[run.scores.sample_id == "q0"]
    for metric, values in expected.items():
        got = scores[scores.metric == metric].sort_values(["layer", "group"]).value.to_numpy()
        assert torch.allclose(torch.tensor(got, dtype=torch.float64), values, rtol=1e-5, atol=1e-7), metric
    # a different estimator cannot resume it; exact runs keep the hash they had before estimators existed
    exact_config = {k: config.get(k) for k in HASHED_KEYS}
    assert config_hash(exact_config) == config_hash({**exact_config, "estimator": "exact"})
    assert main(["scan", "--model", str(checkpoints["llava"]), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--metric", "dlogp,dprob,kl", "--resume", "-q"]) == 2
    assert "estimator: 'gradient' -> None" in capsys.readouterr().err
    assert len(read_run(tmp_path / "run")["samples"]) == 2


def test_estimator_refusals(models, dataset):
    data = dataset("llava", 1)
    error_of(lambda: horizon.scan(models["llava"], data, estimator="guess", progress=False), "--estimator", "guess")
    error_of(lambda: horizon.scan(models["llava"], data, estimator="gradient", protocol="keep", saturation_fix=False,
                                  progress=False), "--no-saturation-fix", "keep protocol")
    error_of(lambda: horizon.scan(models["llava"], data, estimator="gradient", kl_tokens=0, progress=False),
             "--kl-tokens")


def test_hybrid_plan_measures_around_the_estimated_horizon_and_the_top_groups():
    import numpy as np

    from horizon.scan import hybrid_plan

    # mean positive part per layer: 1.0, 0.5, 0.2, 0.01, 0.0, 0.0 -> at or below 5% of 1.0 from layer 3 on
    estimate = np.array([[1.0, 2.0, 0.5, -0.5], [0.5, 1.0, 0.5, 0.0], [0.2, 0.4, 0.2, 0.0],
                         [0.01, 0.03, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    plan = hybrid_plan(estimate, margin=1, top_share=0.25)
    expected = np.zeros_like(plan)
    expected[2:5] = True  # the horizon (3) +- 1
    expected[[0, 1, 5], [1, 1, 0]] = True  # each layer's top group (ties: the first)
    assert (plan == expected).all()
    # a curve that never vanishes: the last layers are measured
    assert hybrid_plan(np.ones((4, 3)), margin=1, top_share=0.0).tolist() == [[False] * 3] * 3 + [[True] * 3]


def test_hybrid_measures_exactly_what_it_says_and_estimates_the_rest(models, dataset, tmp_path):
    """The rows hybrid marks exact are the exact engine's scores bit for bit (batch 1: no row shares arithmetic with
    another), the others are the gradient estimate's, and the marks are hybrid_plan's on the estimate, grown until
    the band around the horizon of the measured-where-marked scores is marked."""
    import numpy as np

    from horizon.scan import hybrid_plan, hybrid_rounds

    vlm, data = models["llava"], dataset("llava", 2)
    options = dict(metrics=("dlogp", "kl"), group=1, batch_size=1, progress=False)
    exact = horizon.scan(vlm, data, out=tmp_path / "exact", **options).scores
    grad = horizon.scan(vlm, data, out=tmp_path / "gradient", estimator="gradient", **options).scores
    hybrid = horizon.scan(vlm, data, out=tmp_path / "hybrid", estimator="hybrid", hybrid_top=0.2, **options)
    config = json.loads((tmp_path / "hybrid" / "run.json").read_text())
    assert config["estimator"] == "hybrid" and config["hybrid"]["top"] == 0.2
    key = ["sample_id", "metric", "layer", "group"]

    def ordered(frame):
        return frame.astype({"sample_id": str, "metric": str}).sort_values(key).reset_index(drop=True)

    h, e, g = ordered(hybrid.scores), ordered(exact), ordered(grad)
    assert h.exact.any() and not h.exact.all() and not g.exact.any()
    assert (h.value[h.exact].to_numpy() == e.value[h.exact].to_numpy()).all()
    assert (h.value[~h.exact].to_numpy() == g.value[~h.exact].to_numpy()).all()
    for sid in ("q0", "q1"):
        est, ex = (f[(f.sample_id == sid) & (f.metric == "dlogp")].pivot(index="layer", columns="group",
                                                                          values="value").to_numpy() for f in (g, e))
        marks = h[(h.sample_id == sid) & (h.metric == "dlogp")].pivot(index="layer", columns="group", values="exact")
        _, expected = hybrid_rounds(est, hybrid_plan(est, 1, 0.2), 1, lambda cells: ex[cells])
        assert (marks.to_numpy() == expected).all() and (expected >= hybrid_plan(est, 1, 0.2)).all()


def test_hybrid_rounds_follow_the_measured_horizon_where_the_estimate_misplaced_it():
    """An estimate that puts the horizon at layer 1 while the measured scores carry information up to layer 3:
    the band re-read from the measured scores moves up round by round until it holds the measured horizon."""
    import numpy as np

    from horizon.scan import hybrid_band, hybrid_rounds

    estimate = np.zeros((8, 4))
    estimate[0] = 1.0
    exact = np.zeros((8, 4))
    exact[:4] = [[1.0, 0.5, 0.2, 0.1]] * 4
    first = hybrid_band(estimate, 1)
    assert np.nonzero(first.any(1))[0].tolist() == [0, 1, 2]
    rounds = []

    def measure(cells):
        rounds.append(np.nonzero(cells.any(1))[0].tolist())
        return exact[cells]

    values, done = hybrid_rounds(estimate, first, 1, measure)
    # exact's horizon is layer 4 (information through layer 3): layers 3..5 measured, and everything below;
    # round 1 measures 0..2, which puts the horizon at 3 (band 2..4), round 2 finds it at 4 (band 3..5)
    assert rounds == [[0, 1, 2], [3, 4], [5]]
    assert done[:6].all() and not done[6:].any()
    assert (values[:6] == exact[:6]).all() and (values[6:] == estimate[6:]).all()



def keep_gates(vlm, clean, groups, layer, opened=None, only=None):
    """The keep protocol's base point from ``layer`` on (every visual key closed), with group ``opened`` open
    from ``layer`` on, or in layer ``only`` alone."""
    visual = sorted({p for g in groups for p in g.positions})
    gates = torch.zeros(vlm.n_layers, clean.seq_len, dtype=torch.float64)
    gates[layer:, visual] = -torch.inf
    if opened is not None:
        gates[layer if only is None else only: (None if only is None else only + 1), list(opened.positions)] = 0.0
    return gates


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_keep_gates_are_the_engines_keep_and_the_opening_is_exact_per_layer(models, dataset, name):
    """Keeping g from layer l on is the gates of every other visual key closed from l on (the engine's keep
    ablation); and the estimate's per-layer change is <d value / d(attention output of j), the change of that
    output the model computes when g's gates open in layer j alone>."""
    from horizon.estimators import _Opening

    vlm = models[name]
    clean, groups, target = prepared(vlm, dataset(name, 1))
    visual = sorted({p for g in groups for p in g.positions})
    with torch.no_grad():
        for layer in (0, vlm.n_layers - 1):
            g = groups[len(groups) // 2]
            kept = tuple(p for p in visual if p not in g.positions)
            ((_, logq),) = list(run_ablations(vlm, clean, [Ablation(layer, kept)], 1, True))
            assert (gated_logprobs(vlm, clean, keep_gates(vlm, clean, groups, layer, g)) - logq[0]).abs().max() < 2e-5
    layer = 0
    base = keep_gates(vlm, clean, groups, layer).requires_grad_(True)
    outputs, inputs = [], []
    with torch.enable_grad():
        logp = gated_logprobs(vlm, clean, base, outputs, None, inputs)
        heads = torch.autograd.grad(logp[0, target[0]], outputs)
    opening = _Opening(vlm, clean, groups, inputs, outputs, layer)
    got = opening(list(heads))
    with torch.no_grad():
        for j in range(vlm.n_layers):
            for gi in (0, len(groups) - 1):
                changed: list[torch.Tensor] = []
                gated_logprobs(vlm, clean, keep_gates(vlm, clean, groups, layer, groups[gi], only=j), changed)
                expected = float((heads[j].double() * (changed[j] - outputs[j]).double()).sum())
                assert float(got[j, gi]) == pytest.approx(expected, rel=1e-3, abs=1e-7), (j, gi)


def test_scan_keep_with_the_gradient_estimator(models, dataset, tmp_path):
    """The keep estimate through scan: the stored scores are estimate_keep's, keep_prob is exp of the kept log p,
    and gain_logp follows the exact keep scan's ordering on this model better than chance."""
    from horizon.estimators import estimate_keep
    from scipy import stats

    vlm, data = models["llava"], dataset("llava", 1)
    metrics = ("gain_logp", "gain_prob", "keep_prob")
    run = horizon.scan(vlm, data, out=tmp_path / "est", protocol="keep", estimator="gradient", metrics=metrics,
                       group=2, progress=False)
    exact = horizon.scan(vlm, data, out=tmp_path / "exact", protocol="keep", metrics=metrics, group=2,
                         progress=False)
    clean, groups, target = prepared(vlm, data)
    expected = estimate_keep(vlm, clean, target, groups, list(range(vlm.n_layers)), metrics)
    scores = run.scores
    for metric, values in expected.items():
        got = scores[scores.metric == metric].sort_values(["layer", "group"]).value.to_numpy()
        assert torch.allclose(torch.tensor(got, dtype=torch.float64), values, rtol=1e-5, atol=1e-7), metric
    gain = expected["gain_logp"]
    keep = expected["keep_prob"]
    base = keep / (gain.exp())  # p(y) at the base point, the same for every group of a layer
    assert torch.allclose(base.view(vlm.n_layers, -1), base.view(vlm.n_layers, -1)[:, :1].expand(-1, len(groups)))
    ex = exact.scores[exact.scores.metric == "gain_logp"].sort_values(["layer", "group"]).value.to_numpy()
    est = scores[scores.metric == "gain_logp"].sort_values(["layer", "group"]).value.to_numpy()
    assert stats.spearmanr(ex, est).statistic > 0.9


def test_analysis_keeps_an_estimate_apart_from_the_measured_model_and_names_it(models, dataset, tmp_path):
    """An exact and a gradient run of one model analysed together are two models, the estimate named as one
    (so no table, figure or comparison reads it as measured), each as it is analysed alone; run.json naming an
    estimator horizon does not know is refused."""
    from pandas.testing import assert_frame_equal

    from horizon.stats import StatsParams, analyze_frames, load_runs

    vlm, data = models["llava"], dataset("llava", 3)
    options = dict(metrics=("dlogp",), group=1, progress=False)
    horizon.scan(vlm, data, out=tmp_path / "exact", **options)
    horizon.scan(vlm, data, out=tmp_path / "gradient", estimator="gradient", **options)
    params = StatsParams(n_boot=50, n_perm=50)
    both = analyze_frames(load_runs([tmp_path / "exact", tmp_path / "gradient"]), params=params)["summary"]
    alone = {side: analyze_frames(load_runs([tmp_path / side]), params=params)["summary"]
             for side in ("exact", "gradient")}
    name = alone["exact"].model.iloc[0]
    assert alone["gradient"].model.iloc[0] == f"{name} (gradient estimate)"
    assert sorted(both.model.unique()) == [name, f"{name} (gradient estimate)"]
    for side in ("exact", "gradient"):
        rows = both[both.model == alone[side].model.iloc[0]].reset_index(drop=True)
        assert_frame_equal(rows, alone[side])
    config = json.loads((tmp_path / "gradient" / "run.json").read_text())
    (tmp_path / "gradient" / "run.json").write_text(json.dumps({**config, "estimator": "guess"}))
    error_of(lambda: load_runs([tmp_path / "gradient"]), "estimator must be one of exact, gradient, hybrid")
