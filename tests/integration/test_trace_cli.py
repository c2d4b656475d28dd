"""`posttrain trace` end to end on the tiny model: effect tables, heatmaps, trace.json's schema, resume, and the
refusal to mix settings that shape the results in one output folder."""

from __future__ import annotations

import json

import pytest

from posttrain.cli import main
from posttrain.io import read_jsonl, write_jsonl
from posttrain.tracing_report import POSITIONS

ARGS = ["--num_noisy", "2", "--window", "1", "--batch_size", "16"]


def _known_and_unknown_facts(model_dir, count: int = 2) -> list[dict]:
    """`count` facts the random tiny model "knows" (each answer is its own greedy first token) and one it does not."""
    import torch

    from posttrain.data.proving_ground import proving_ground_rows
    from posttrain.models import load_causal_lm, load_tokenizer
    from posttrain.tracing import tokenize_fact

    model, tokenizer = load_causal_lm(str(model_dir)).eval(), load_tokenizer(str(model_dir))
    known = []
    for index, row in enumerate(proving_ground_rows("facts/all")):
        fact = {key: row[key] for key in ("subject", "prompt", "answer")}
        with torch.no_grad():
            greedy = int(model(torch.tensor([tokenize_fact(tokenizer, fact, index).ids])).logits[0, -1].argmax())
        answer = tokenizer.decode([greedy]).strip()
        if answer and tokenize_fact(tokenizer, {**fact, "answer": answer}, index).answer_id == greedy:
            known.append({**fact, "answer": answer})
        if len(known) == count:
            return [*known, {"subject": "Vorel Tamsin", "prompt": "Vorel Tamsin lives in", "answer": "zzzz"}]
    raise AssertionError("the tiny model has too few greedy answers to build known facts from")


def test_trace_writes_tables_heatmaps_and_resumes(tiny_model_dir, tmp_path, capsys):
    facts, output = tmp_path / "facts.jsonl", tmp_path / "trace"
    write_jsonl(facts, _known_and_unknown_facts(tiny_model_dir))
    argv = ["trace", "--model", str(tiny_model_dir), "--facts", str(facts), "--output", str(output), *ARGS]
    main(argv)
    assert "facts known (greedy first answer token): 2/3" in capsys.readouterr().out
    trace = json.loads((output / "trace.json").read_text())
    assert trace["schema"] == 1 and trace["num_facts"] == 3 and trace["num_known"] == 2
    assert trace["positions"] == list(POSITIONS) and trace["layers"] == [0, 1]
    for kind in ("hidden", "mlp", "attn"):
        assert (output / f"trace_{kind}.png").stat().st_size > 0
        rows = trace["effects"][kind]["effect"]
        assert len(rows) == len(POSITIONS) and all(row is None or len(row) == 2 for row in rows)
    assert set(trace["suggested_layers"]) <= {0, 1} and trace["suggestion"]["kind"] == "mlp"
    records = list(read_jsonl(output / "facts.jsonl"))
    assert [r["correct"] for r in records] == [True, True, False] and "mlp" not in records[2]

    main(argv)  # a rerun resumes: nothing is traced again, the same tables come out
    assert len(list(read_jsonl(output / "facts.jsonl"))) == 3
    assert json.loads((output / "trace.json").read_text()) == trace
    main([*argv, "--min_effect_share", "1.0", "--batch_size", "4"])  # only the summary changes: no retrace
    assert len(list(read_jsonl(output / "facts.jsonl"))) == 3
    assert json.loads((output / "trace.json").read_text())["suggestion"]["min_share"] == 1.0


def test_a_rerun_with_other_settings_is_refused(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "trace"
    base = ["trace", "--model", str(tiny_model_dir), "--facts", "pg:facts/all", "--num_facts", "1",
            "--output", str(output), "--kinds", "hidden", *ARGS]
    main(base)
    with pytest.raises(SystemExit) as stop:
        main([*base, "--noise_factor", "2"])
    assert stop.value.code == 2
    assert "holds a trace with other settings" in capsys.readouterr().err


def test_facts_and_output_folder_are_checked_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import posttrain.models

    monkeypatch.setattr(posttrain.models, "load_causal_lm", lambda *args, **kwargs: pytest.fail("the model loaded"))
    facts, output = tmp_path / "facts.jsonl", tmp_path / "trace"
    write_jsonl(facts, [{"subject": "Vorel Tamsin", "prompt": "Vorel lives in", "answer": "Pradu"}])
    with pytest.raises(SystemExit) as stop:
        main(["trace", "--model", str(tiny_model_dir), "--facts", str(facts), "--output", str(output)])
    assert stop.value.code == 2 and "subject 'Vorel Tamsin' does not occur in its prompt" in capsys.readouterr().err
    output.mkdir()
    (output / "settings.json").write_text(json.dumps({"model": "another-model"}))
    with pytest.raises(SystemExit) as stop:
        main(["trace", "--model", str(tiny_model_dir), "--facts", "pg:facts/all", "--num_facts", "1",
              "--output", str(output)])
    assert stop.value.code == 2 and "holds a trace with other settings" in capsys.readouterr().err
    assert [path.name for path in output.iterdir()] == ["settings.json"]
