"""Opening a prepared data set's records, and reading their text fields.

`open_records(data, split)`: a random-access TFDS data source of the configured builder (the
schema of data/tfds/common.py), what the LM pipeline, the demo and the evaluation read.
`field_text(v)`: one field of such a record as `str` (TFDS gives text back as bytes).
"""

from __future__ import annotations

import re
from typing import Any

import ml_collections

from llmcxr_jax.errors import InputError, MissingInputError


def field_text(v: Any) -> str:
    """A record's field as text: bytes decoded as UTF-8, anything else through `str`."""
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


OUR_BUILDERS = ("cxr_phantoms", "mimic_cxr_jpg", "open_i")


def tfds_builder(name: str, data_dir: str | None, **kwargs: Any) -> Any:
    """`tfds.builder(name, ...)` in array_record format, with a bad name, config or
    `builder_kwargs` entry turned into one InputError line (TFDS's own messages list every
    registered data set, or say "__init__() got an unexpected keyword argument")."""
    import tensorflow_datasets as tfds

    import llmcxr_jax.data.tfds  # noqa: F401  (registers our builders)

    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record", **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        raise InputError(
            f"data set {name!r}: not found; this package's builders are {', '.join(OUR_BUILDERS)}"
        ) from None
    except (TypeError, ValueError) as e:  # unknown config or keyword argument, a bad value
        # TFDS re-raises with 'Failed to construct dataset "x", builder_kwargs "{...}": ' first
        reason = str(e).split("\n")[0].rstrip(" :")
        reason = re.sub(
            r'^Failed to construct dataset "[^"]*", builder_kwargs ".*\}": ', "", reason
        )
        reason = reason.split(". Here are")[0]  # then a list of similar config names
        raise InputError(f"data set {name!r} with arguments {kwargs}: {reason}") from None


def open_records(data: ml_collections.ConfigDict, split: str) -> Any:
    """A TFDS data source of the configured builder (images left undecoded: codes suffice)."""
    import tensorflow_datasets as tfds

    name = data.builder + (f"/{data.builder_config}" if data.get("builder_config") else "")
    kwargs = dict(data.get("builder_kwargs", {}) or {})
    builder = tfds_builder(name, data.data_dir or None, **kwargs)
    if not builder.is_prepared():
        raise MissingInputError(
            f"{name} is not prepared in {data.data_dir or '~/tensorflow_datasets'}: run "
            "`llmcxr-jax prepare-data` (or the demo) first"
        )
    if split not in builder.info.splits:
        raise InputError(f"{name}: no split {split!r}; it has {sorted(builder.info.splits)}")
    decoders = {"image": tfds.decode.SkipDecoding()} if "image" in builder.info.features else None
    return builder.as_data_source(split, decoders=decoders)
