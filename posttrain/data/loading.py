"""Load a dataset from a proving-ground spec, a local file or folder, or a hub id; validate its columns."""

from __future__ import annotations

import codecs
import itertools
import logging
from pathlib import Path

from posttrain.errors import UsageError

PROVING_GROUND_PREFIX = "pg:"

# Columns each dataset kind must have (TRL's standard formats; conversational or plain text both accepted).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "verifiable": ("prompt", "answer"),
    "revision": ("prompt", "draft", "revision"),
    "unlearning": ("prompt", "completion", "split"),
}
# TRL also accepts single-column language-modelling data for SFT, and preference pairs whose prompt is the shared
# start of the chosen and rejected conversations ("implicit prompt", e.g. trl-lib/ultrafeedback_binarized).
ALTERNATIVE_COLUMNS = {"sft": [("messages",), ("text",)], "preference": [("chosen", "rejected")],
                       "unlearning": [("input", "output", "split")]}  # SemEval-2025 Task 4 (LUME) rows

# Columns that hold text (or role/content message lists) in every dataset kind.
TEXT_COLUMNS = ("prompt", "completion", "chosen", "rejected", "messages", "text", "draft", "revision", "input",
                "output")
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_TEXT_SUFFIXES = (".json", ".jsonl", ".csv")


def not_utf8(what: str, path: str, offset: int, byte: int) -> str:
    """The one-line message for a text file that is not valid UTF-8."""
    return f"{what} {str(path)!r} is not UTF-8 text (byte {offset} is {byte:#04x}); re-save it with UTF-8 encoding"


def first_non_utf8_byte(path: str | Path) -> tuple[int, int] | None:
    """(offset, value) of the first byte that breaks UTF-8 decoding, or None; reads the file in 1 MiB chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    fed = 0
    with open(path, "rb") as handle:
        for chunk in itertools.chain(iter(lambda: handle.read(1 << 20), b""), [b""]):  # b"": flush the decoder
            start = fed - len(decoder.getstate()[0])  # offset of the decoder's buffered bytes + this chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                return start + err.start, err.object[err.start]
            fed += len(chunk)
    return None


def check_utf8(path: Path) -> None:
    """JSON and CSV files must be UTF-8 (pyarrow reads some invalid bytes silently and fails on others)."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for file in files:
        bad = first_non_utf8_byte(file) if file.suffix in _TEXT_SUFFIXES and file.is_file() else None
        if bad:
            raise UsageError(not_utf8("dataset file", str(file), *bad))


def _unreadable(path: Path, err: BaseException) -> UsageError:
    """A one-line error for a local dataset the `datasets` builders could not parse. datasets wraps the parser's
    message (pyarrow's) in a generic one, and a fallback parser's error follows it in the chain; name pyarrow's."""
    from datasets.exceptions import DatasetGenerationError

    if isinstance(err, DatasetGenerationError) and err.__cause__ is not None:
        err = err.__cause__
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UsageError(f"cannot read dataset {str(path)!r} ({reason}); check that it is well-formed JSON lines, "
                      f"a JSON list of rows, CSV or Parquet")


def check_dataset_path(name: str, setting: str = "dataset_name") -> None:
    """A name that looks like a local path (./, /, ~ or a data-file suffix) must exist; `setting` is what the user
    set it with (the recipe key, or a CLI flag such as --instructions)."""
    if name.startswith(PROVING_GROUND_PREFIX) or Path(name).expanduser().exists():
        return
    if name.startswith((".", "/", "~")) or Path(name).suffix in _FILE_BUILDERS:
        raise UsageError(f"{setting} {name!r} does not exist; pass an existing file or folder, a pg:<task>/<kind> "
                         f"name or a hub id")


def _load_local(path: Path, split: str):
    from datasets import load_dataset, load_from_disk

    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = load_from_disk(str(path))
            return loaded[split] if hasattr(loaded, "keys") else loaded
        return _parse_local(path, lambda: load_dataset(str(path), split=split))
    builder = _FILE_BUILDERS.get(path.suffix)
    if builder is None:
        raise UsageError(f"dataset file {str(path)!r} has unsupported type {path.suffix!r}; "
                         f"use one of {', '.join(_FILE_BUILDERS)} or a dataset folder")
    if path.stat().st_size == 0:
        raise UsageError(f"dataset file {str(path)!r} is empty")
    return _parse_local(path, lambda: load_dataset(builder, data_files={split: str(path)}, split=split))


def _parse_local(path: Path, load):
    """Run a `datasets` builder on the user's files; what it fails on is the file's content, so one line (the
    builder's own error log, which repeats it, is held back while it parses)."""
    check_utf8(path)
    datasets_logger = logging.getLogger("datasets")
    level = datasets_logger.level
    datasets_logger.setLevel(logging.CRITICAL)
    try:
        return load()
    except Exception as err:  # pyarrow, pandas and datasets raise many types for a malformed file
        raise _unreadable(path, err) from None
    finally:
        datasets_logger.setLevel(level)


def load_any_dataset(name: str, split: str = "train", config: str | None = None, num_examples: int | None = None,
                     seed: int = 0):
    """`pg:<task>/<kind>` (proving ground), a local path, or a hub id with optional config name."""
    if name.startswith(PROVING_GROUND_PREFIX):
        from posttrain.data.proving_ground import proving_ground_dataset

        return proving_ground_dataset(name[len(PROVING_GROUND_PREFIX):], split, num_examples, seed)
    check_dataset_path(name)
    path = Path(name).expanduser()
    if path.exists():
        dataset = _load_local(path, split)
    else:
        from datasets import load_dataset

        try:
            dataset = load_dataset(name, name=config, split=split)
        except Exception as err:  # the hub raises many types; all mean "could not load this name"
            raise UsageError(f"cannot load dataset {name!r} split {split!r}: {str(err).splitlines()[0]}") from None
    if len(dataset) == 0:
        raise UsageError(f"dataset {name!r} split {split!r} has no rows")
    if num_examples is not None:
        dataset = dataset.select(range(min(num_examples, len(dataset))))
    return dataset


def validate_columns(dataset, kind: str, name: str = "dataset") -> None:
    """Raise a one-line `UsageError` naming the missing columns for this dataset kind."""
    columns = set(dataset.column_names)
    options = [REQUIRED_COLUMNS[kind], *ALTERNATIVE_COLUMNS.get(kind, [])]
    matched = next((option for option in options if set(option) <= columns), None)
    if matched:
        check_column_values(dataset, matched, name)
        return
    missing = sorted(set(REQUIRED_COLUMNS[kind]) - columns)
    raise UsageError(f"{name} is missing column(s) {', '.join(missing)} needed for {kind} data "
                     f"(has: {', '.join(sorted(columns))})")


def check_column_values(dataset, columns: tuple[str, ...], name: str = "dataset") -> None:
    """Every row has a value in each of `columns`, and the text columns hold text or message lists; read from the
    Arrow schema and null counts, so no row is decoded. Rows missing a key (JSON lines) or a JSON list of bare
    values otherwise fail inside the tokenizer with a traceback."""
    import pyarrow.compute as pc
    from datasets import Value

    for column in columns:
        feature = dataset.features[column]
        if column in TEXT_COLUMNS and isinstance(feature, Value) and feature.dtype not in ("string", "large_string"):
            raise UsageError(f"{name}: column {column!r} holds {feature.dtype} values, not text; every row must "
                             f"be a JSON object whose {', '.join(columns)} values are strings or role/content "
                             f"message lists")
        values = dataset.data.column(column)
        if values.null_count:
            row = pc.index(pc.is_null(values), True).as_py()
            raise UsageError(f"{name}: row {row} has no {column!r} value; every row needs {', '.join(columns)}")


def load_prompt_dataset(source: str, setting: str, split: str | None = None, limit: int | None = None,
                        seed: int = 0):
    """(dataset, column) for a file, `pg:` spec or hub id of prompts named by the option `setting` (e.g.
    `--prompts`): its `prompt` column, else its `instruction` column. The split defaults to `test` for `pg:` specs
    (held-out prompts) and `train` otherwise; `seed` is a `pg:` generator's seed."""
    check_dataset_path(source, setting)
    dataset = load_any_dataset(source, split or ("test" if source.startswith("pg:") else "train"),
                               num_examples=limit, seed=seed)
    columns = set(dataset.column_names)
    column = "prompt" if "prompt" in columns else "instruction" if "instruction" in columns else None
    if column is None:
        raise UsageError(f"{setting} {source!r} needs a 'prompt' or 'instruction' column "
                         f"(has: {', '.join(sorted(columns))})")
    return dataset, column
