"""Errors caused by what the user gave, and how the command line reports them.

:class:`UserInputError` is a ``ValueError`` (so ``except ValueError`` keeps working in library code) that marks an
error as the user's to fix: arguments, a recipe, a path, a dataset, a model path, a reward function's return value.
``trl-ext`` prints it as one line, ``trl-ext <command>: error: <message>``, and exits 2; ``trl-ext --debug <command>``
(or ``TRL_EXT_DEBUG=1``) shows the traceback instead.

Setting a run up (parsing, reading the recipe, loading data and model, building the trainer) happens inside
:func:`user_input`: there, a ``ValueError``, ``LookupError`` (unknown name), ``OSError`` (missing file, bad model
path, a model that is not in the offline cache) or ``ImportError`` (an optional dependency not installed) is the
user's input error as well and is re-raised as :class:`UserInputError`. Once training has started, only errors raised
as :class:`UserInputError` are one line; anything else keeps its traceback, because it is more likely a fault than
an input.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

__all__ = ["SETUP_ERRORS", "OneLineArgumentParser", "UserInputError", "message_of", "one_line_error", "user_input"]


class UserInputError(ValueError):
    """An error in the user's input; the message starts with the input's name (``field: what is wrong``).

    ``converted`` is true when the error was raised as another type during set-up (see :func:`user_input`): the
    command line then names that type, since it may also be a fault rather than an input.
    """

    def __init__(self, message: str, *, converted: bool = False) -> None:
        super().__init__(message)
        self.converted = converted


# What set-up raises for bad input: ValueError (configs, checks, datasets), LookupError (KeyError: an unknown
# registered name), OSError (FileNotFoundError, transformers' "not a valid model identifier", offline misses),
# ImportError (an optional dependency missing). TypeError and AttributeError are left alone: far more often a fault.
SETUP_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, OSError, ImportError)


def message_of(exc: BaseException) -> str:
    """``exc``'s message on one line (a ``KeyError``'s without the quotes ``str`` adds; newlines folded)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    else:
        text = str(exc)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text or type(exc).__name__


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """Within the block (a run's set-up), :data:`SETUP_ERRORS` are the user's input errors: re-raised as
    :class:`UserInputError` chained to the original, whose traceback ``--debug`` shows."""
    try:
        yield
    except UserInputError:
        raise
    except SETUP_ERRORS as exc:
        message = message_of(exc)
        # ValueError and LookupError (an unknown registered name) carry messages written for the user. Other kinds
        # may be faults as well as inputs: name the kind ("OSError: ...") and let the command line offer --debug.
        converted = not isinstance(exc, ValueError | LookupError)
        if converted:
            message = f"{type(exc).__name__}: {message}"
        raise UserInputError(message, converted=converted) from exc


def one_line_error(parser: argparse.ArgumentParser, message: str) -> None:
    """What a ``trl-ext`` parser does on a bad option: ``<prog>: error: <message>`` on one line (no usage block; the
    line says where ``--help`` is) and exit status 2, as for every other input error."""
    sys.stderr.write(f"{parser.prog}: error: {message} ({parser.prog} --help lists the options)\n")
    raise SystemExit(2)


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (:func:`one_line_error`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        one_line_error(self, message)
