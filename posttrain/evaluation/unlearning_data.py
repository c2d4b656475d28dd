"""The inputs of `posttrain eval unlearning` (docs/methods.md §5.3), read and checked before any model loads.

- Forget and retain sets: LUME rows `{id, input, output, task?}` (JSON, JSON lines or Parquet). The id ends in
  `sc<digit>` or `qa<digit>`; a missing `task` column puts every row in task `all`. A prompt-completion set such as
  `pg:facts/forget` (`prompt`, `completion`) is scored both ways: each row becomes an `sc` and a `qa` row with the
  prompt as input and the completion as gold output, in task `facts` (pg:) or `all`; their ids are
  `<split><row>sc0` and `<split><row>qa0` (e.g. forget3qa0), which a --generations file for them must use.
- Generations (`--generations`): rows `{id, output}`, `output` being the system's text for that id; an optional
  `split` column tells apart ids that occur in both sets. This command writes that format as generations.jsonl.
- MIA documents: rows with `document`, or with `input` and `output`, which are joined by one space (a LUME `sc`
  row is a document cut in two at a space).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.evaluation.unlearning import id_kind

ROW_COLUMNS = ("id", "input", "output")


def _records(source: str, what: str) -> list[dict]:
    from posttrain.data.loading import check_dataset_path, load_any_dataset

    check_dataset_path(source, what)
    return load_any_dataset(source, "train").to_list()


def _missing(columns: set, needed: tuple[str, ...]) -> list[str]:
    return [c for c in needed if c not in columns]


def load_rows(source: str, split: str) -> list[dict]:
    """The rows of one split as {id, split, task, kind, input, output}, checked."""
    what = f"--{split}"
    records = _records(source, what)
    columns = set(records[0])
    if _missing(columns, ROW_COLUMNS) and not _missing(columns, ("prompt", "completion")):
        records = _both_ways(records, "facts" if source.startswith("pg:") else "all", split)
    elif missing := _missing(columns, ROW_COLUMNS):
        raise UsageError(f"{what} {source!r} is missing column(s) {', '.join(missing)}; LUME rows need id, input, "
                         f"output (and task), or prompt and completion (has: {', '.join(sorted(columns))})")
    rows = []
    for index, record in enumerate(records):
        kind = id_kind(str(record["id"]))
        if kind is None:
            raise UsageError(f"{what} {source!r} row {index}: id {record['id']!r} does not end in sc<digit> "
                             "(sentence completion) or qa<digit> (question); LUME ids such as 61943187qa0 do")
        if not isinstance(record["input"], str) or not isinstance(record["output"], str):
            raise UsageError(f"{what} {source!r} row {index}: input and output must be text")
        rows.append({"id": str(record["id"]), "split": split, "task": str(record.get("task") or "all"), "kind": kind,
                     "input": record["input"], "output": record["output"]})
    repeated = [key for key, count in Counter(r["id"] for r in rows).items() if count > 1]
    if repeated:
        raise UsageError(f"{what} {source!r} repeats id {repeated[0]!r}; every row needs its own id")
    return rows


def _both_ways(records: list[dict], task: str, split: str) -> list[dict]:
    rows = []
    for index, record in enumerate(records):
        if not isinstance(record["prompt"], str):
            raise UsageError(f"--{split} row {index}: prompt must be text (a raw prompt, no chat messages)")
        for kind in ("sc", "qa"):
            rows.append({"id": f"{split}{index}{kind}0", "task": record.get("task") or task,
                         "input": record["prompt"], "output": record["completion"]})
    return rows


def read_generations(path: str, rows: list[dict]) -> list[str]:
    """The generation for each row from a `{id, output, split?}` file; UsageError for rows it lacks."""
    records = _records(path, "--generations")
    if missing := _missing(set(records[0]), ("id", "output")):
        raise UsageError(f"--generations {path!r} is missing column(s) {', '.join(missing)}; each row needs id and "
                         "output (the system's text for that id)")
    by_key = {}
    for record in records:
        key = (record.get("split"), str(record["id"]))
        if key in by_key:
            raise UsageError(f"--generations {path!r} has two outputs for id {key[1]!r}"
                             + (f" in split {key[0]}" if key[0] else "; add a split column if the sets share ids"))
        by_key[key] = "" if record["output"] is None else str(record["output"])
    outputs, lacking = [], []
    for row in rows:
        found = by_key.get((row["split"], row["id"]), by_key.get((None, row["id"])))
        if found is None:
            lacking.append(row["id"])
        outputs.append(found)
    if lacking:
        raise UsageError(f"--generations {path!r} has no output for {len(lacking)} of {len(rows)} rows, e.g. id "
                         f"{lacking[0]!r}; it must cover every forget and retain id")
    return outputs


def member_documents(rows: list[dict]) -> list[str]:
    """The default members: the forget set's documents, i.e. its `sc` rows, input and output joined."""
    return [_join(r["input"], r["output"]) for r in rows if r["split"] == "forget" and r["kind"] == "sc"]


def _join(first: str, second: str) -> str:
    return f"{first.rstrip()} {second.lstrip()}"


def _text_join(first, second) -> str | None:
    """The two joined as `_join` does, or None (refused below) unless both are text."""
    return _join(first, second) if isinstance(first, str) and isinstance(second, str) else None


def read_documents(path: str, flag: str) -> list[str]:
    records = _records(path, flag)
    columns = set(records[0])
    if "document" in columns:
        documents = [r["document"] for r in records]
    elif not _missing(columns, ("input", "output")):
        documents = [_text_join(r["input"], r["output"]) for r in records]
    elif not _missing(columns, ("prompt", "completion")):  # e.g. pg:facts/holdout, joined as the forget rows are
        documents = [_text_join(r["prompt"], r["completion"]) for r in records]
    else:
        raise UsageError(f"{flag} {path!r} needs a document column (or input and output, or prompt and completion) "
                         f"(has: {', '.join(sorted(columns))})")
    if not all(isinstance(d, str) and d.strip() for d in documents):
        raise UsageError(f"{flag} {path!r}: every document must be non-empty text")
    return documents


def data_sources(data: str | None, forget: str | None, retain: str | None) -> tuple[str, str]:
    """--forget/--retain, else <--data>/forget.jsonl and retain.jsonl."""
    if data is not None:
        folder = Path(data).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--data {data!r} is not a folder; pass one holding forget.jsonl and retain.jsonl, or "
                             "--forget FILE --retain FILE")
        forget, retain = forget or str(folder / "forget.jsonl"), retain or str(folder / "retain.jsonl")
    if forget is None or retain is None:
        raise UsageError("say which sets to score: --data FOLDER (with forget.jsonl and retain.jsonl) or "
                         "--forget FILE --retain FILE")
    return forget, retain
