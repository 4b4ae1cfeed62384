

def test_hybrid_runs_say_which_scores_were_measured(runs, tmp_path):
    run = write_run(tmp_path / "hybrid", model="m", task="t", estimator="hybrid",
                    images=sorted((runs["root"] / "img-shapes").glob("*.png"))[:2])
    scores = pd.read_parquet(run / "scores.parquet")
    scores["exact"] = (scores.layer == 2) | (scores.group == 0)  # one layer and one window measured exactly
    scores.to_parquet(run / "scores.parquet", index=False)
    data = report_data([run], params=PARAMS)
    assert data["runs"][0]["estimator"] == "hybrid" and data["summary"][0]["estimate"] == "hybrid"
    flags = data["runs"][0]["samples"][0]["exact"]["dlogp"]
    assert len(flags) == 6 * 9
    assert [i for i, f in enumerate(flags) if f == "1"] == sorted({2 * 9 + w for w in range(9)}
                                                                  | {layer * 9 for layer in range(6)})
