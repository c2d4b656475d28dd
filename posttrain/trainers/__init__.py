"""One module per method, each a narrow subclass of a TRL trainer (registered in `posttrain.registry`)."""
