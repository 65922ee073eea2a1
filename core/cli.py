"""Shared command-line plumbing: user errors become one line on stderr and exit 2."""
from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from typing import Callable, Sequence

from core.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; turn :class:`UserError` into ``error: ...`` + exit 2, Ctrl-C into 130."""
    try:
        return int(main(argv) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is the module docstring (it shows the exact command)."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )


# third-party deprecation notices a user of the command line can do nothing about
# (PEFT 0.21 reads transformers 5's deprecated ``is_gradient_checkpointing`` alias)
QUIET_WARNINGS = ("`is_gradient_checkpointing` is deprecated",)


def setup_logging(verbose: bool = False) -> None:
    """Messages to stderr, without the library noise in :data:`QUIET_WARNINGS` (shown with -v)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    if not verbose:
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=re.escape(message), category=FutureWarning)
