"""`posttrain iterate --config <recipe.yaml> [--key value ...]`: INPO's loop (or iterative DPO), resumable in
every phase; the library is `posttrain.iterate`."""

from __future__ import annotations

from posttrain.errors import UsageError

USAGE = "usage: posttrain iterate --config <recipe.yaml> [--key value ...]"


def main(argv: list[str]) -> dict | None:
    from posttrain.console import quiet_libraries
    from posttrain.iterate import run_loop
    from posttrain.recipe import parse_recipe

    if not argv:
        raise UsageError(f"{USAGE} (e.g. --config recipes/inpo/sort8_tiny_cpu.yaml)")
    if argv[0] in ("-h", "--help"):
        print(loop_help())
        return None
    recipe = parse_recipe(argv)
    with quiet_libraries(recipe.run.verbose):
        return run_loop(recipe)


def loop_help() -> str:
    """The usage line and every loop key with its default and help (the method's own keys: posttrain recipe M)."""
    import dataclasses

    from posttrain.recipe import IterateArguments

    about = " ".join(__doc__.split(":", 1)[1].split())
    lines = [USAGE, "", about, "Phases and folders: docs/methods.md §3. Training keys: posttrain recipe <method>.",
             "", "Loop keys:"]
    for f in dataclasses.fields(IterateArguments):
        help_text = str(f.metadata.get("help", "")).removeprefix("posttrain iterate: ")
        lines.append(f"  {f.name:<27} {f.default!s:<11} {help_text}")
    return "\n".join(lines)
