"""Load a dataset from a proving-ground spec, a local file or folder, or a hub id; validate its columns."""

from __future__ import annotations

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
ALTERNATIVE_COLUMNS = {"sft": [("messages",), ("text",)], "preference": [("chosen", "rejected")]}

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _load_local(path: Path, split: str):
    from datasets import load_dataset, load_from_disk

    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = load_from_disk(str(path))
            return loaded[split] if hasattr(loaded, "keys") else loaded
        return load_dataset(str(path), split=split)
    builder = _FILE_BUILDERS.get(path.suffix)
    if builder is None:
        raise UsageError(f"dataset file {str(path)!r} has unsupported type {path.suffix!r}; "
                         f"use one of {', '.join(_FILE_BUILDERS)} or a dataset folder")
    if path.stat().st_size == 0:
        raise UsageError(f"dataset file {str(path)!r} is empty")
    return load_dataset(builder, data_files={split: str(path)}, split=split)


def load_any_dataset(name: str, split: str = "train", config: str | None = None, num_examples: int | None = None,
                     seed: int = 0):
    """`pg:<task>/<kind>` (proving ground), a local path, or a hub id with optional config name."""
    if name.startswith(PROVING_GROUND_PREFIX):
        from posttrain.data.proving_ground import proving_ground_dataset

        return proving_ground_dataset(name[len(PROVING_GROUND_PREFIX):], split, num_examples, seed)
    path = Path(name).expanduser()
    if path.exists():
        dataset = _load_local(path, split)
    elif name.startswith((".", "/", "~")) or path.suffix in _FILE_BUILDERS:
        raise UsageError(f"dataset path {name!r} does not exist; check dataset_name in the recipe")
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
    if any(set(option) <= columns for option in options):
        return
    missing = sorted(set(REQUIRED_COLUMNS[kind]) - columns)
    raise UsageError(f"{name} is missing column(s) {', '.join(missing)} needed for {kind} data "
                     f"(has: {', '.join(sorted(columns))})")
