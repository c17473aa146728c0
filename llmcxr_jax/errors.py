"""The one exception type for failures that are the user's to fix.

Why one type: the `llmcxr-jax` command turns exactly `InputError` into a single line,
`llmcxr-jax COMMAND: error: MESSAGE`, and exit status 2; any other exception is a bug in this
package and keeps its traceback. So a bad file, flag or config field must raise an
`InputError` (or a subclass) at the place that finds it, and nothing else may be caught to
look like one.

The convention for the message: one line that names the input (a path, `--flag`, or a config
field such as `config.json: num_attention_heads`) and then says what is wrong with it, e.g.
`runs/x/config.json: num_attention_heads must be a positive integer, got 0`.

`InputError` is a `ValueError`, so library callers that catch `ValueError` keep working;
`MissingInputError` and `OutputExistsError` are also the `FileNotFoundError` and
`FileExistsError` a caller of the file functions may expect. This module imports nothing, so
every layer (data code without JAX included) can raise these.
"""

from __future__ import annotations

import operator
from typing import Any


class InputError(ValueError):
    """An input (file, flag, config field) that cannot be used; the message names it and says
    why, on one line."""


class MissingInputError(InputError, FileNotFoundError):
    """A named input file or directory that does not exist."""


class OutputExistsError(InputError, FileExistsError):
    """An output that is already there and that the command will not replace without being
    asked to (`--overwrite`)."""


def positive_int(value: Any, what: str) -> int:
    """`value` as an int >= 1, or an InputError naming `what`. Ints of any kind (numpy's too)
    and integral floats pass; bools, text and fractions are refused: a config's `true`,
    `"four"` or `2.5` heads is a mistake, not a count."""
    n: int | None = None
    if not isinstance(value, bool):
        try:
            n = operator.index(value)
        except TypeError:
            if isinstance(value, float) and value.is_integer():
                n = int(value)
    if n is None or n < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return n
