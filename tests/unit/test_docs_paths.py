"""The repository documents itself: every path the docs name exists, and nothing requires the reference folder.

Users clone this repository alone. The folder beside it that the project was started from (`../shared`: reference
data and notes) is not part of a clone, so a doc, recipe comment or docstring may mention it only as an optional
extra, never as something a command needs. Checked here:

- every repository path named in README.md, docs/*.md, tests/fixtures/*/README.md, the comment lines of
  recipes/**/*.yaml and the docstrings under posttrain/, eval/, scripts/ and tests/ exists (globs such as
  `recipes/accelerate/*.yaml` must match something; run outputs and placeholders are skipped);
- no line in those places requires `../shared`;
- no such text cites a document only the reference folder has (METHODS.md, PROVING_GROUND.md, ...): the project's
  own specification is docs/methods.md.
"""

from __future__ import annotations

import ast
import glob
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

TOP_DIRS = ("posttrain", "recipes", "scripts", "eval", "tests", "docs", "requirements", ".ci")
TOP_FILES = ("Makefile", "pyproject.toml", "README.md")
# A path token starts at a word boundary that is not inside another path or URL (no letter, '.', '/' or '-' before).
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(re.escape(d) for d in TOP_DIRS) + r")/[\w./*<>{}\[\]|-]*"
                  r"|(?:" + "|".join(re.escape(f) for f in TOP_FILES) + r")(?![\w.-]))")
PLACEHOLDER = re.compile(r"[<{\[|]")  # recipes/<method>/..., runs/{name}, a|b alternatives: not literal paths

SHARED = re.compile(r"\.\./shared\b|(?<![\w-])shared/(?:data|methods|hooks)\b|shared/[A-Z_]+\.md")
OPTIONAL = re.compile(r"\boptional\b|\bwhen present\b|\bif present\b", re.IGNORECASE)
# (file, text on the line) -> why the line may name ../shared without saying it is optional. Keep this small.
SHARED_ALLOWED: dict[tuple[str, str], str] = {}

REFERENCE_ONLY_DOCS = re.compile(r"(?<![\w/.-])(?:METHODS|PROVING_GROUND|DESIGN)\.md\b|\bseed-papers\.txt\b")


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def doc_lines() -> list[tuple[str, int, str]]:
    """(file, line number, text) of README.md, docs/*.md, the fixtures' READMEs and recipe comment lines."""
    lines = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
                 *sorted((REPO / "tests" / "fixtures").glob("*/README.md"))]:
        lines += [(_rel(path), n, text) for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    for path in sorted((REPO / "recipes").rglob("*.yaml")):
        for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if text.lstrip().startswith("#"):
                lines.append((_rel(path), n, text))
    return lines


def docstring_lines() -> list[tuple[str, int, str]]:
    """(file, line number, text) of every module, class and function docstring under posttrain/, eval/, scripts/,
    tests/."""
    lines = []
    for top in ("posttrain", "eval", "scripts", "tests"):
        for path in sorted((REPO / top).rglob("*.py")):
            if path == Path(__file__).resolve():  # this file names what it looks for
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                if not (node.body and isinstance(node.body[0], ast.Expr)
                        and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)):
                    continue
                first = node.body[0].lineno
                lines += [(_rel(path), first + k, text)
                          for k, text in enumerate(node.body[0].value.value.splitlines())]
    return lines


def named_paths(text: str) -> list[str]:
    paths = []
    for token in PATH.findall(text):
        token = token.rstrip(".,;:)'\"`")
        if not token or PLACEHOLDER.search(token):
            continue
        paths.append(token)
    return paths


def exists(token: str) -> bool:
    if "*" in token:
        return bool(glob.glob(str(REPO / token), recursive=True))
    return (REPO / token).exists()


def test_path_extraction():
    text = ("see `recipes/accelerate/*.yaml`, scripts/train.py. `recipes/<method>/x.yaml` runs/toy/tests/x "
            "https://github.com/a/tests/b `Makefile`, docs/methods.md §1 and (eval/mmlu.py) .ci/run")
    assert named_paths(text) == ["recipes/accelerate/*.yaml", "scripts/train.py", "Makefile", "docs/methods.md",
                                 "eval/mmlu.py", ".ci/run"]
    assert exists("recipes/accelerate/*.yaml") and not exists("recipes/accelerate/*.toml")


def test_every_named_repository_path_exists():
    named = [(file, n, token) for file, n, text in doc_lines() + docstring_lines() for token in named_paths(text)]
    assert len({file for file, _, _ in named}) > 10, "the path extraction found almost nothing: is PATH still right?"
    missing = [f"{file}:{n}: {token}" for file, n, token in named if not exists(token)]
    assert not missing, "paths named in the docs that do not exist in the repository:\n" + "\n".join(missing)


def test_nothing_requires_the_reference_folder():
    required = []
    for file, n, text in doc_lines() + docstring_lines():
        if not SHARED.search(text) or OPTIONAL.search(text):
            continue
        if any(file == f and snippet in text for (f, snippet) in SHARED_ALLOWED):
            continue
        required.append(f"{file}:{n}: {text.strip()}")
    assert not required, ("lines that name ../shared, which a clone does not have, without saying it is optional "
                          "('optional', 'when present', 'if present'); point at tests/fixtures/, a hub id or "
                          "docs/methods.md instead:\n" + "\n".join(required))


def test_no_citation_of_reference_only_documents():
    cited = [f"{file}:{n}: {text.strip()}" for file, n, text in doc_lines() + docstring_lines()
             if REFERENCE_ONLY_DOCS.search(text)]
    assert not cited, ("lines citing a document that only the reference folder has; cite docs/methods.md §N "
                       "instead:\n" + "\n".join(cited))
