"""MMLU data loading, prompts (lm-eval's `mmlu` format), tokenisation/truncation rules, aggregation and the CLI's
input checks. Model-backed parity with lm-eval lives in tests/integration/test_mmlu_parity.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from posttrain.errors import UsageError
from posttrain.evaluation import mmlu
from posttrain.evaluation.loglikelihood import encode_requests, is_truncated, plan_groups, resolve_max_length
from posttrain.evaluation.mmlu_cli import main, parse_args

FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures" / "mmlu")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from posttrain.models import build_tiny_tokenizer

    corpus = [q.question + " ".join(q.choices) for s in mmlu.available_subjects(FIXTURE)
              for q in mmlu.load_split(FIXTURE, s, "test")]
    return build_tiny_tokenizer(corpus)


def test_categories_are_lm_evals():
    import lm_eval

    folder = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    tagged = {}
    for path in folder.glob("mmlu_*.yaml"):
        config = yaml.safe_load(path.read_text())
        tagged[config["dataset_name"]] = config["tag"].removeprefix("mmlu_").removesuffix("_tasks").replace("_", " ")
        assert config["description"] == mmlu.subject_header(config["dataset_name"])
    assert tagged == mmlu.SUBJECT_CATEGORY
    assert {c: len(s) for c, s in mmlu.CATEGORY_SUBJECTS.items()} == {
        "stem": 19, "humanities": 13, "social sciences": 12, "other": 13}


def test_fixture_loads_with_header_and_index_answers():
    assert mmlu.available_subjects(FIXTURE) == ["abstract_algebra", "global_facts", "world_religions"]
    test = mmlu.load_split(FIXTURE, "abstract_algebra", "test")
    assert len(test) == 20 and test[0].index == 0 and test[0].answer == 1
    assert test[0].question.startswith("Find the degree for the given field extension")
    assert test[0].choices == ("0", "4", "2", "6")
    assert len(mmlu.load_split(FIXTURE, "world_religions", "dev")) == 5


def test_original_release_format_without_header_and_letter_answers(tmp_path):
    _write(tmp_path / "test" / "anatomy_test.csv", 'What is 1+1?,1,2,"3, or so",4,B\nQ2,a,b,c,d,D\n')
    questions = mmlu.load_split(str(tmp_path), "anatomy", "test")
    assert [(q.question, q.choices, q.answer) for q in questions] == [
        ("What is 1+1?", ("1", "2", "3, or so", "4"), 1), ("Q2", ("a", "b", "c", "d"), 3)]


@pytest.mark.parametrize("content, message", [
    ("", "has no questions"),
    ("question,choice0,choice1,choice2,choice3,answer\n", "has no questions"),
    ("Q,a,b,c,d,E\n", "line 1"),
    ("question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,1\nQ,a,b,c,3\n", "line 3"),
])
def test_bad_csv_is_a_usage_error_naming_the_line(tmp_path, content, message):
    _write(tmp_path / "test" / "anatomy_test.csv", content)
    with pytest.raises(UsageError, match=message):
        mmlu.load_split(str(tmp_path), "anatomy", "test")


def test_subject_selection(tmp_path):
    assert mmlu.select_subjects(FIXTURE, ["world_religions", "global_facts"]) == ["world_religions", "global_facts"]
    with pytest.raises(UsageError, match="did you mean 'world_religions'"):
        mmlu.select_subjects(FIXTURE, ["world_religion"])
    with pytest.raises(UsageError, match="'anatomy' has no test file"):
        mmlu.select_subjects(FIXTURE, ["anatomy"])
    with pytest.raises(UsageError, match="no test/ folder"):
        mmlu.select_subjects(str(tmp_path), None)
    with pytest.raises(UsageError, match="does not exist"):
        mmlu.select_subjects(str(tmp_path / "missing"), None)
    assert mmlu.select_subjects("cais/mmlu", None) == list(mmlu.SUBJECTS) and len(mmlu.SUBJECTS) == 57


def test_zero_shot_prompt_is_lm_evals_template():
    q = mmlu.Question("high_school_us_history", 0, "  Who?\n", ("x", " y", "z", "w"), 2)
    assert mmlu.plain_prompt(q, []) == (
        "The following are multiple choice questions (with answers) about high school us history.\n\n"
        "Who?\nA. x\nB.  y\nC. z\nD. w\nAnswer:")
    fmt = mmlu.PromptFormat()
    assert fmt.continuations() == [" A", " B", " C", " D"]


def test_five_shot_prompt_uses_dev_rows_in_order():
    dev = mmlu.load_split(FIXTURE, "global_facts", "dev")
    question = mmlu.load_split(FIXTURE, "global_facts", "test")[0]
    shots = mmlu.fewshot_examples(FIXTURE, "global_facts", 5)
    assert shots == dev
    prompt = mmlu.plain_prompt(question, shots)
    blocks = prompt.split("\n\n")
    assert blocks[0] == "The following are multiple choice questions (with answers) about global facts."
    assert blocks[1:6] == [f"{mmlu.format_question(s)} {'ABCD'[s.answer]}" for s in dev]
    assert blocks[6] == mmlu.format_question(question) and len(blocks) == 7
    with pytest.raises(UsageError, match="exceeds the 5 dev questions"):
        mmlu.fewshot_examples(FIXTURE, "global_facts", 6)


def test_chat_messages_multiturn_and_single_turn():
    dev = mmlu.load_split(FIXTURE, "abstract_algebra", "dev")[:2]
    q = mmlu.load_split(FIXTURE, "abstract_algebra", "test")[3]
    multi = mmlu.chat_messages(q, dev, multiturn=True)
    assert [m["role"] for m in multi] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert multi[0]["content"] == mmlu.subject_header("abstract_algebra")
    assert multi[2]["content"] == "ABCD"[dev[0].answer] and multi[-1]["content"] == mmlu.format_question(q)
    single = mmlu.chat_messages(q, dev, multiturn=False)
    assert [m["role"] for m in single] == ["system", "user"]
    assert single[1]["content"] == mmlu.plain_prompt(q, dev).removeprefix(mmlu.subject_header(q.subject))


def test_chat_rendering_and_continuations(tokenizer):
    q = mmlu.load_split(FIXTURE, "abstract_algebra", "test")[0]
    fmt = mmlu.PromptFormat(0, tokenizer, True)
    assert fmt.continuations() == ["A", "B", "C", "D"]
    assert fmt.context(q, []) == (f"<|bos|><|system|>{mmlu.subject_header(q.subject)}<|user|>"
                                  f"{mmlu.format_question(q)}<|assistant|>")


def test_encoding_moves_trailing_space_and_skips_a_second_bos(tokenizer):
    (ctx, cont), = encode_requests(tokenizer, [("Answer: ", "A")])
    (ctx2, cont2), = encode_requests(tokenizer, [("Answer:", " A")])
    assert (ctx, cont) == (ctx2, cont2) and ctx == tokenizer("Answer:")["input_ids"]
    assert tokenizer.decode(cont) == " A"
    (ctx, cont), = encode_requests(tokenizer, [("<|bos|>Answer:", " A")])
    assert ctx.count(tokenizer.bos_token_id) == 1 and ctx[0] == tokenizer.bos_token_id
    (ctx, cont), = encode_requests(tokenizer, [("", "Answer")])  # empty context: condition on BOS
    assert ctx == [tokenizer.bos_token_id] and tokenizer.decode(cont) == "Answer"


def test_truncation_and_grouping():
    encoded = [([1, 2, 3, 4, 5], [6]), ([1, 2, 3, 4, 5], [7]), ([9, 5], [6, 7]), ([1, 2, 3], [4, 8])]
    groups = plan_groups(encoded, max_length=4)
    # sequences keep their last max_length + 1 tokens; the input is that minus its last token
    assert [(g.input_ids, g.members) for g in groups] == [
        ((1, 2, 3, 4), [(3, (4, 8))]), ((2, 3, 4, 5), [(0, (6,)), (1, (7,))]), ((9, 5, 6), [(2, (6, 7))])]
    assert [g.positions for g in groups] == [2, 1, 2]
    assert [is_truncated(e, 4) for e in encoded] == [True, True, False, False]
    with pytest.raises(UsageError, match="exceeds max_length"):
        plan_groups([([1], [2, 3, 4])], max_length=2)


def test_max_length_lookup_order(tokenizer):
    from types import SimpleNamespace as Config

    assert resolve_max_length(Config(max_position_embeddings=256, n_ctx=64), tokenizer) == 256
    assert resolve_max_length(Config(n_positions=128, max_position_embeddings=256), tokenizer) == 128
    assert resolve_max_length(Config(text_config=Config(n_ctx=64), n_positions=8), tokenizer) == 64
    assert resolve_max_length(Config(), tokenizer) == tokenizer.model_max_length == 512
    tokenizer_without_limit = Config(model_max_length=int(1e30))
    assert resolve_max_length(Config(), tokenizer_without_limit) == 2048


def test_prediction_and_size_weighted_aggregation():
    assert mmlu.predict([-3.0, -1.0, -1.0, -2.0]) == 1  # first of the tied best
    records = [{"subject": "anatomy", "correct": c} for c in (True, True, False, False)]
    records += [{"subject": "astronomy", "correct": True}]
    records += [{"subject": "sociology", "correct": c} for c in (True, False)]
    result = mmlu.aggregate(records)
    assert result["subjects"]["anatomy"] == {"acc": 0.5, "correct": 2, "n": 4, "category": "stem"}
    assert result["categories"]["stem"]["acc"] == pytest.approx(3 / 5)  # not the mean of 0.5 and 1.0
    assert result["categories"]["social sciences"]["acc"] == 0.5
    assert set(result["categories"]) == {"stem", "social sciences"}
    assert result["overall"] == {"acc": pytest.approx(4 / 7), "correct": 4, "n": 7}


@pytest.mark.parametrize("flags, message", [
    (["--num_fewshot", "6"], "between 0 and 5"),
    (["--limit", "0"], "--limit must be a positive"),
    (["--fewshot_as_multiturn", "maybe"], "expected true or false"),
    (["--bogus"], "unrecognized arguments"),
    (["--backend", "vlm"], "invalid choice"),
])
def test_cli_rejects_bad_flags(flags, message):
    with pytest.raises(UsageError, match=message):
        parse_args(["--model", "m", *flags])


def test_cli_defaults_and_exit_code(capsys):
    args = parse_args(["--model", "runs/x/", "--subjects", "anatomy,astronomy", "virology", "--num_fewshot", "5"])
    assert args.subjects == ["anatomy", "astronomy", "virology"]
    assert args.output_dir == "runs/mmlu/x_5shot" and args.data == "cais/mmlu" and args.fewshot_as_multiturn
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "m", "--data", FIXTURE, "--subjects", "astronomy"])
    assert exit_info.value.code == 2 and "has no test file" in capsys.readouterr().err


def test_resume_refuses_other_settings(tmp_path):
    settings = {"model": "m", "num_fewshot": 0, "max_length": 256}
    mmlu.check_resumable(tmp_path, settings)
    mmlu.check_resumable(tmp_path, settings)
    with pytest.raises(UsageError, match="different num_fewshot"):
        mmlu.check_resumable(tmp_path, settings | {"num_fewshot": 5})
