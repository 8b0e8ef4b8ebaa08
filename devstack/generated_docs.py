"""The command line both document generators share (`python -m devstack.asyncapi`,
`python -m devstack.openapi`): write the documents, or `--check` that they match."""

import argparse
import sys
from collections.abc import Callable, Sequence


def command(
    argv: Sequence[str] | None,
    *,
    prog: str,
    what: str,
    check: Callable[[], list[str]],
    write: Callable[[], list[str]],
) -> int:
    """Regenerate `what` from the code; with `--check` write nothing and exit 1 naming
    every file that differs."""
    parser = argparse.ArgumentParser(prog=prog, description=f"Regenerate {what} from the code.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming every file that differs from the code",
    )
    if parser.parse_args(argv).check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{what}: not what the code generates: run `make docs`.", file=sys.stderr)
            return 1
        print(f"{what}: matches the code.")
        return 0
    changed = write()
    for line in changed:
        print(line)
    if not changed:
        print(f"{what}: up to date.")
    return 0
