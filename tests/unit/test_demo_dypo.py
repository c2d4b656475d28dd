"""DYPO's proving-ground comparison (posttrain/demo_dypo.py) and benchmark reward (scripts/bench_dypo.py): the pure
parts, without training."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from posttrain.data.proving_ground import proving_ground_rows
from posttrain.demo_dypo import ARMS, GRPO, HARD, SFT_ON_TEACHERS, claims, teacher_sft_rows

REPO = Path(__file__).resolve().parents[2]


def test_teacher_sft_rows_draw_one_trace_per_prompt_from_the_teachers():
    rows = proving_ground_rows("sort8/verifiable", "train", 200, seed=0)
    sft = teacher_sft_rows(rows, seed=0)
    assert [r["prompt"] for r in sft] == [r["prompt"] for r in rows]
    picked = [r["completion"][0]["content"] for r in sft]
    assert all(text in row["teachers"] for text, row in zip(picked, rows))
    first = sum(text == row["teachers"][0] for text, row in zip(picked, rows))
    assert 70 < first < 130  # uniform over the two teachers
    assert teacher_sft_rows(rows, seed=0) == sft and teacher_sft_rows(rows, seed=1) != sft


def _row(arm, seed, accuracy, hard=()):
    return {"arm": arm, "seed": seed, "accuracy": accuracy, HARD: list(enumerate(hard))}


def test_claims_hold_only_when_they_hold_on_every_seed():
    rows = [_row("dypo", 0, 0.8, (0.9, 0.4)), _row("dypo", 1, 0.7, (1.0, 0.5)), _row(GRPO, 0, 0.5), _row(GRPO, 1, 0.5),
            _row(SFT_ON_TEACHERS, 0, 0.6), _row(SFT_ON_TEACHERS, 1, 0.75), _row("dypo-1-teacher", 0, 0.7),
            _row("dypo-1-teacher", 1, 0.6)]
    beats_pure, two_teachers, hard_falls = claims(rows)
    assert not beats_pure["holds"]  # seed 1: SFT on teachers 0.75 > DYPO 0.70
    assert two_teachers["holds"]
    assert hard_falls["holds"] and "seed 0: 0.90 -> 0.40; seed 1: 1.00 -> 0.50" in hard_falls["measured"]
    rows[1][HARD] = list(enumerate((0.2, 0.3, 0.2, 0.5)))  # seed 1 rises: first quarter 0.2, last 0.5
    assert not claims(rows)[2]["holds"]


def test_the_comparison_has_the_four_arms_of_the_issue():
    assert set(ARMS) == {"dypo", GRPO, SFT_ON_TEACHERS, "dypo-1-teacher"}


def _bench_module():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location("bench_dypo", REPO / "scripts" / "bench_dypo.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "scripts"))


def test_bench_reward_gives_hard_easy_and_mid_groups():
    bench = _bench_module()
    rows = proving_ground_rows("sort8/verifiable", "train", 60, seed=0)
    routes = []
    for row in rows:
        completions = [[{"role": "assistant", "content": f"{i}{i * 7}"}] for i in range(8)]
        rewards = bench.route_mixing_reward([row["prompt"]] * 8, completions)
        routes.append("hard" if sum(rewards) == 0 else "easy" if sum(rewards) == 8 else "mid")
    assert min(routes.count(kind) for kind in ("hard", "easy", "mid")) >= 10  # about a third each


def test_dypo_paper_recipe_keeps_the_papers_settings():
    from posttrain.recipe import parse_recipe

    recipe = parse_recipe(["--config", str(REPO / "recipes/dypo/qwen2.5-math-7b_openr1_zero3.yaml"),
                           "--bf16", "false", "--use_cpu", "true"])
    args = recipe.training
    assert (args.num_generations, args.learning_rate, args.alpha, args.beta_gal, args.gamma_sft) == (8, 1e-6, 0.5,
                                                                                                    1.0, 1.0)
    assert args.answer_reward == "math_verify" and len(args.teacher_columns) == 2
    assert args.contrastive_loss_coef is None and not args.gal_use_ref  # the paper's mixture, reference-free GAL
