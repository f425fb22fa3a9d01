"""The learned-weights picture of the metric_learning bundle: written, and the printed means are on the simplex."""

from __future__ import annotations

import ast

from benchmarks.learned_weights_figure import main


def test_figure_of_the_shipped_metric(tmp_path, capsys):
    out = tmp_path / "weights.png"
    main(["--bundle", "metric_learning", "--output", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    means = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(means) == {2.0, 4.0, 8.0, 16.0} and abs(sum(means.values()) - 1.0) < 0.01
    assert list(tmp_path.iterdir()) == [out]
