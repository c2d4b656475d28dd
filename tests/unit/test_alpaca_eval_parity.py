"""Our win-rate metrics reproduce the published AlpacaEval 2 leaderboard numbers from the judges' real annotations.

The fixture (tests/fixtures/alpaca_eval, see its README) holds the per-example preferences and output lengths of
four models' published annotations and their leaderboard rows.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from posttrain.evaluation import winrate as w

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "alpaca_eval"
MODELS = ["claude-2", "alpaca-7b_verbose", "alpaca-7b", "alpaca-7b_concise"]
FLOAT_METRICS = ["win_rate", "standard_error", "discrete_win_rate"]
COUNT_METRICS = ["n_wins", "n_wins_base", "n_draws", "n_total"]


def published() -> dict[str, dict]:
    with (FIXTURE / "leaderboard_subset.csv").open() as handle:
        return {row[""]: row for row in csv.DictReader(handle)}


def annotations(model: str) -> dict:
    return json.loads((FIXTURE / f"{model}.json").read_text())


def test_fixture_covers_the_four_leaderboard_models():
    assert sorted(published()) == sorted(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_metrics_match_the_published_leaderboard(model):
    row, prefs = published()[model], annotations(model)["preference"]
    for name in FLOAT_METRICS:
        assert getattr(w, name)(prefs) == pytest.approx(float(row[name]), abs=1e-9, rel=0), name
    for name in COUNT_METRICS:
        assert getattr(w, name)(prefs) == int(row[name]), name


@pytest.mark.parametrize("model", MODELS)
def test_cli_on_annotations_prints_the_published_numbers(model, tmp_path, capsys):
    from posttrain.evaluation.winrate_cli import main

    data = annotations(model)
    rows = [{"instruction": f"instruction {k}", "output_1": "r" * ref, "output_2": "m" * out,
             "generator_1": data["generator_1"], "generator_2": model, "preference": p}
            for k, (p, ref, out) in enumerate(zip(data["preference"], data["output_1_length"],
                                                  data["output_2_length"]))]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows))
    main(["--annotations", str(path), "--output_dir", str(tmp_path / "out")])
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    row = published()[model]
    for metrics in (printed, written[model]):
        for name in FLOAT_METRICS:
            assert metrics[name] == pytest.approx(float(row[name]), abs=1e-9, rel=0), name
        for name in COUNT_METRICS:
            assert metrics[name] == int(row[name]), name
        assert metrics["n_failed"] == 0


@pytest.mark.parametrize("model", ["claude-2", "alpaca-7b", "alpaca-7b_concise"])
def test_avg_length_matches_when_every_output_was_annotated(model):
    # alpaca-7b_verbose has 802 annotations for 805 outputs; the leaderboard averages over all 805 outputs.
    lengths = annotations(model)["output_2_length"]
    assert w.avg_length(["x" * n for n in lengths]) == int(published()[model]["avg_length"])


@pytest.mark.parametrize("model", MODELS)
def test_cli_scores_the_compact_fixture_form_like_the_row_form(model, tmp_path, capsys):
    """The README's command: `--annotations tests/fixtures/alpaca_eval/<model>.json` (preferences and lengths by
    column) gives the published numbers, and the same LC win rate as the equivalent list of annotation rows."""
    from posttrain.evaluation.winrate_cli import main

    main(["--annotations", str(FIXTURE / f"{model}.json"), "--output_dir", str(tmp_path / "compact")])
    compact = json.loads(capsys.readouterr().out)
    row = published()[model]
    for name in FLOAT_METRICS:
        assert compact[name] == pytest.approx(float(row[name]), abs=1e-9, rel=0), name
    data = annotations(model)
    rows = [{"instruction": str(k), "output_1": "r" * ref, "output_2": "m" * out, "preference": p}
            for k, (p, ref, out) in enumerate(zip(data["preference"], data["output_1_length"],
                                                  data["output_2_length"]))]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    main(["--annotations", str(tmp_path / "rows.json"), "--output_dir", str(tmp_path / "rows")])
    assert compact == json.loads(capsys.readouterr().out)
    assert "claude-2" not in model or compact["length_controlled_winrate"] == pytest.approx(35.9, abs=0.05)


def test_compact_annotations_with_ragged_columns_is_one_line_error(tmp_path):
    from posttrain.errors import UsageError
    from posttrain.evaluation.winrate_cli import run

    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"preference": [1.0, 2.0], "output_1_length": [3], "output_2_length": [4, 5]}))
    with pytest.raises(UsageError, match="must hold lists preference, output_1_length, output_2_length of one length"):
        run(["--annotations", str(path), "--output_dir", str(tmp_path / "out")])
