"""The README's Python examples run as written."""

import re
from pathlib import Path


def run_readme_example(marker: str) -> dict:
    """Execute the README's python block containing ``marker``; returns its namespace."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if marker in b)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    return namespace


def test_readme_python_api_example_runs():
    namespace = run_readme_example("horizon.scan(")
    result = namespace["result"]
    assert len(result.scores) == 2 * 2 * 4 * 2  # samples x layers x 1x1 groups of 2x2 x metrics
    assert set(namespace["run"].config["numerical_floor"]) == {"gain_logp", "gain_prob"}
    summary = namespace["analysis"]["summary"]
    assert set(summary.metric) == {"gain_logp", "gain_prob"} and set(summary.vanishing_test) == {"equivalence"}


def test_readme_pruning_example_runs():
    result = run_readme_example("prune_eval(")["result"]
    assert len(result.predictions) == 3 * 2  # samples x seeds
    assert set(result.predictions.schedule) == {"divprune@0:12,random@2:4"}


def test_readme_report_example_runs():
    namespace = run_readme_example("horizon.report(")
    result = namespace["result"]
    page = result["path"].read_text(encoding="utf-8")
    assert result["size"] == len(page.encode("utf-8")) and 'id="report-data"' in page
    assert set(result["summary"].metric) == {"dlogp", "kl"} and "data:image/" in page
