"""posttrain: LLM post-training objectives as narrow TRL trainer subclasses, driven by YAML recipes."""

__version__ = "0.1.0"
