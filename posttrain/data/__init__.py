"""Dataset loading, validation and the proving-ground tasks."""

from posttrain.data.loading import REQUIRED_COLUMNS, load_any_dataset, validate_columns
from posttrain.data.proving_ground import proving_ground_dataset, proving_ground_rows
from posttrain.data.tasks import TASKS, get_task, tokenizer_corpus

__all__ = ["REQUIRED_COLUMNS", "TASKS", "get_task", "load_any_dataset", "proving_ground_dataset",
           "proving_ground_rows", "tokenizer_corpus", "validate_columns"]
