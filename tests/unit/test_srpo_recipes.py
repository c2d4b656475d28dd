"""The SRPO GPU recipes keep the pull request's alpha and beta and share one valid summarisation template."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.recipe import parse_recipe
from posttrain.revision import RevisionTemplate

REPO = Path(__file__).resolve().parents[2]
GPU_RECIPES = ("recipes/srpo/pythia-1b-tldr_lora.yaml", "recipes/srpo/pythia-6.9b-tldr_zero3.yaml")


def _parse(path: str):
    return parse_recipe(["--config", str(REPO / path), "--bf16", "false", "--use_cpu", "true"])


@pytest.mark.parametrize("path", GPU_RECIPES)
def test_gpu_recipes_train_srpo_on_tldr_with_the_pull_requests_alpha_and_beta(path):
    recipe = _parse(path)
    assert recipe.method.name == "srpo" and recipe.run.dataset_name == "trl-lib/tldr-preference"
    assert (recipe.training.alpha, recipe.training.beta) == (0.8, 0.1)
    assert RevisionTemplate(recipe.training.revision_template).text.endswith("\n\nA better TL;DR:")


def test_lora_recipe_uses_peft_and_names_the_xsum_evaluation():
    recipe = _parse(GPU_RECIPES[0])
    assert recipe.model.use_peft
    header = (REPO / GPU_RECIPES[0]).read_text()
    assert "EdinburghNLP/xsum" in header and "--revisions 5" in header and "--revisions_dir" in header
