from horizon.cli import main
from horizon.store import read_run


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit", "2"]) == 0
    assert main(["demo", "--out", str(out), "--limit", "2"]) == 0  # a rerun resumes the same run
    run = read_run(out / "run")
    assert (run["samples"].status == "ok").all() and len(run["samples"]) == 2
    assert len(run["scores"]) == 2 * 4 * 4 * 2  # samples x layers x 2x2 windows of a 4x4 grid x metrics
    assert str(out) in capsys.readouterr().out
