"""Proving-ground tasks: deterministic synthetic data with programmatic judges.

A tiny model trained from scratch on CPU learns these in seconds to minutes, so every objective can be checked
against its paper's claim without a hub (see `docs/methods.md §8` for the measurements behind the choice).

* `sort<N>`: sort N random digits ("sort 38172049" -> "01234789"), exact-match judge.
* `sort8-rep4`: the out-of-distribution split of sort8 (`OOD_TASKS`): each problem's 8 digits come from only 4
  distinct ones, so answers are long runs of repeats ("sort 77337377" -> "33337777").
* `facts`: synthetic biographies ("Vorel Tamsin lives in Pradu"), split into forget and retain sets for unlearning.

Every example is a pure function of (task, split, seed, index), so datasets are reproducible byte for byte.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def _rng(*key: object) -> random.Random:
    return random.Random("/".join(map(str, key)))


def final_answer(completion: str) -> str:
    """The verifiable answer in a completion: its last whitespace-separated field ("0 1 2 = 012" -> "012")."""
    fields = completion.strip().split()
    return fields[-1] if fields else ""


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def assistant(content: str) -> list[dict]:
    return [{"role": "assistant", "content": content}]


@dataclass(frozen=True)
class SortTask:
    """Sort `num_digits` random digits. Train and test problems never overlap (test strings are held out).
    With `distinct`, each problem draws its digits from that many distinct digits (a shifted distribution)."""

    num_digits: int = 8
    test_size: int = 500
    distinct: int | None = None

    @property
    def name(self) -> str:
        return f"sort{self.num_digits}" + (f"-rep{self.distinct}" if self.distinct else "")

    def _digits(self, rng: random.Random) -> str:
        pool = rng.sample("0123456789", self.distinct) if self.distinct else "0123456789"
        return "".join(rng.choice(pool) for _ in range(self.num_digits))

    def _test_set(self, seed: int) -> list[str]:
        rng = _rng(self.name, "test", seed)
        seen: dict[str, None] = {}
        while len(seen) < self.test_size:
            seen.setdefault(self._digits(rng), None)
        return list(seen)

    def problems(self, split: str, n: int, seed: int = 0) -> list[str]:
        """`n` problem strings; the test split is fixed by `seed`, train draws exclude it."""
        test = self._test_set(seed)
        if split == "test":
            return test[:n]
        held_out, rng, out = set(test), _rng(self.name, split, seed), []
        while len(out) < n:
            digits = self._digits(rng)
            if digits not in held_out:
                out.append(digits)
        return out

    @staticmethod
    def prompt(digits: str) -> str:
        return f"sort {digits}"

    @staticmethod
    def answer(digits: str) -> str:
        return "".join(sorted(digits))

    def score(self, completion: str, answer: str) -> float:
        """The programmatic judge: 1.0 for an exact final answer, else 0.0."""
        return float(final_answer(completion) == answer)

    def corrupt(self, answer: str, rng: random.Random) -> str:
        """A plausible wrong answer: one adjacent swap, substitution, drop or duplication."""
        for _ in range(100):
            chars, i = list(answer), rng.randrange(len(answer))
            kind = rng.choice(("swap", "substitute", "drop", "duplicate"))
            if kind == "swap" and i + 1 < len(chars):
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
            elif kind == "substitute":
                chars[i] = rng.choice("0123456789")
            elif kind == "drop":
                del chars[i]
            else:
                chars.insert(i, chars[i])
            wrong = "".join(chars)
            if wrong != answer:
                return wrong
        raise ValueError(f"cannot corrupt {answer!r}")

    def teacher_traces(self, digits: str) -> list[str]:
        """Two teacher styles (DYPO's m teachers): the bare answer, and a spelled-out trace ending in the answer."""
        answer = self.answer(digits)
        return [answer, " ".join(answer) + " = " + answer]


_SYLLABLES = ["ka", "vo", "rel", "tam", "sin", "pra", "du", "mi", "zor", "el", "an", "tor", "lu", "bex", "qui", "nor"]
_RELATIONS = [("lives in", "place"), ("works as a", "job"), ("was born in", "year")]
_JOBS = ["baker", "pilot", "farmer", "painter", "doctor", "sailor", "weaver", "miner"]


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


@dataclass(frozen=True)
class FactsTask:
    """Synthetic biographies for unlearning: each person has three facts; people are split forget/retain.
    `num_holdout` more people (drawn after them, so the others are unchanged) form the `holdout` split: facts never
    trained on, the non-members of a membership-inference attack."""

    num_people: int = 200
    forget_fraction: float = 0.1
    name: str = "facts"
    num_holdout: int = 20

    def people(self, seed: int = 0) -> list[dict]:
        rng, people, names = _rng(self.name, seed), [], set()
        while len(people) < self.num_people + self.num_holdout:
            name = f"{_word(rng, 2)} {_word(rng, 2)}"
            if name in names:
                continue
            names.add(name)
            people.append({"subject": name, "place": _word(rng, 2), "job": rng.choice(_JOBS),
                           "year": str(rng.randrange(1900, 2000))})
        return people

    def facts(self, seed: int = 0) -> list[dict]:
        """One row per fact: subject, prompt, answer, split in {forget, retain, holdout}."""
        n_forget = max(1, int(self.num_people * self.forget_fraction))
        rows = []
        for index, person in enumerate(self.people(seed)):
            split = "forget" if index < n_forget else "retain" if index < self.num_people else "holdout"
            for relation, key in _RELATIONS:
                rows.append({"subject": person["subject"], "prompt": f"{person['subject']} {relation}",
                             "answer": person[key], "split": split})
        return rows

    def score(self, completion: str, answer: str) -> float:
        return float(completion.strip().lower().startswith(answer.lower()))


TASKS: dict[str, SortTask | FactsTask] = {
    "sort6": SortTask(6),
    "sort8": SortTask(8),
    "sort10": SortTask(10),
    "facts": FactsTask(),
    "sort8-rep4": SortTask(8, distinct=4),
}
# in-distribution task -> its out-of-distribution split. Greedy exact match of the demo's sort8 SFT models (seeds
# 0/1, 0.55/0.52 in distribution): sort8-rep4 0.24/0.17 (its 500 test prompts), i.e. room to improve; on 300 draws
# each, 3 distinct digits 0.14/0.07, digits 0-4 only 0.06/0.06, descending input 0.42/0.32, 7 or 9 digits 0/0.
OOD_TASKS = {"sort8": "sort8-rep4"}


def get_task(name: str) -> SortTask | FactsTask:
    from posttrain.errors import UsageError

    if name not in TASKS:
        raise UsageError(f"unknown proving-ground task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def get_eval_task(name: str, setting: str = "task") -> SortTask:
    """A task with a greedy-decoding benchmark (the sort tasks); a one-line error for any other name. `setting`
    names what the user set (e.g. eval_task)."""
    from posttrain.errors import UsageError

    task = get_task(name)
    if not isinstance(task, SortTask):
        sort_tasks = ", ".join(n for n, t in TASKS.items() if isinstance(t, SortTask))
        raise UsageError(f"{setting} {name!r} has no greedy-decoding benchmark (choose one of {sort_tasks}); score "
                         f"unlearning on the facts task with posttrain eval unlearning")
    return task


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text covering every task's alphabet, for training the tiny tokenizer."""
    corpus = []
    for task in TASKS.values():
        if task.name in OOD_TASKS.values():
            continue  # evaluation-only splits add no text, so the tokenizer (and every tiny model) is unchanged
        if isinstance(task, SortTask):
            for digits in task.problems("train", 200, seed):
                corpus += [task.prompt(digits), " ".join(task.answer(digits)) + " = " + task.answer(digits)]
        else:
            # holdout facts stay out, as the tiny tokenizer was trained before they existed
            corpus += [f"{row['prompt']} {row['answer']}." for row in task.facts(seed) if row["split"] != "holdout"]
    return corpus
