"""Type and range checks for the records training hands to the model card, with errors that name the field.

`check_record_fields(record, source)` checks (and normalises: ints to float where a float is
expected, tuples to lists, dicts to nested records) every field of a dataclass against its type
hints; the `require_*` helpers check ranges, `check_license_choice` a licence as the Hub's metadata
wants it. All raise `RecordFormatError`. No torch.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from typing import Any, Union

OTHER_LICENSE = "other"
_HUB_LICENSE_ID = re.compile(r"^[a-z0-9]+(?:[.+-][a-z0-9]+)*$")  # apache-2.0, mit, cc-by-nc-4.0, llama3.1, other
_LICENSE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")  # the Hub's example: my-license-1.0
_LICENSE_FILE = re.compile(r"^[\w.-]+$")  # LICENSE, LICENSE.md, ... (a file in the model repository)


class ModelCardInputError(ValueError):
    """The checkpoint folder lacks, or has malformed, inputs for the model card."""


class RecordFormatError(ModelCardInputError):
    """A field of eval_results.json / training_summary.json is missing or has the wrong type or range."""


def describe_type(annotation: Any) -> str:
    """Readable name of a type hint, e.g. 'a number or null', 'a mapping of str to (a number or null)'."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        names = [describe_type(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        joined = " or ".join(names)
        return f"{joined} or null" if type(None) in typing.get_args(annotation) else joined
    if origin is list:
        return f"a list (each item {describe_type(typing.get_args(annotation)[0])})"
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        return f"a mapping (keys {describe_type(key_type)}, values {describe_type(value_type)})"
    if dataclasses.is_dataclass(annotation):
        return f"a mapping with the fields of {annotation.__name__}"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false", Any: "any value"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def coerce_value(value: Any, annotation: Any, where: str) -> Any:
    """`value` checked against `annotation` and normalised; raises RecordFormatError naming `where`."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        alternatives = [arg for arg in arguments if arg is not type(None)]
        if len(alternatives) == 1 and (typing.get_origin(alternatives[0]) or dataclasses.is_dataclass(alternatives[0])):
            return coerce_value(value, alternatives[0], where)  # the error about an item or a nested field
        for argument in alternatives:
            try:
                return coerce_value(value, argument, where)
            except RecordFormatError:
                continue
    elif origin is list and isinstance(value, (list, tuple)):
        return [coerce_value(item, arguments[0], f"{where}[{index}]") for index, item in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: coerce_value(item, arguments[1], f"{where}[{key!r}]") for key, item in value.items()}
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, dict):
            return annotation.from_dict(value)
    elif annotation is bool and isinstance(value, bool):
        return value
    elif isinstance(value, bool):
        pass  # true/false is not a number
    elif annotation is int and isinstance(value, numbers.Integral):
        return int(value)
    elif annotation is float and isinstance(value, numbers.Real):
        return float(value)
    elif annotation is str and isinstance(value, str):
        return value
    raise RecordFormatError(f"{where} must be {describe_type(annotation)}, got {value!r}.")


def check_record_fields(record: Any, source: str) -> None:
    """Check and normalise every field of the dataclass `record` in place (`source` names it in errors)."""
    hints = typing.get_type_hints(type(record))
    for field in dataclasses.fields(record):
        value = coerce_value(getattr(record, field.name), hints[field.name], f"{source}: '{field.name}'")
        object.__setattr__(record, field.name, value)


def require_fraction(value: float | None, where: str) -> None:
    """A metric must be a finite fraction in [0, 1] (as `evaluate`'s mean_iou returns), or absent."""
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise RecordFormatError(
            f"{where} must be a fraction in [0, 1] (as returned by evaluate's mean_iou), got {value!r}."
        )


def require_count(value: int | None, where: str, *, at_most: int | None = None) -> None:
    """A count must be >= 0 (and <= `at_most` when given), or absent."""
    if value is None:
        return
    if value < 0 or (at_most is not None and value > at_most):
        bound = f" and at most {at_most}" if at_most is not None else ""
        raise RecordFormatError(f"{where} must be a count >= 0{bound}, got {value!r}.")


def require_known_keys(data: dict[str, Any], known: set[str], source: str) -> None:
    """Reject keys that are not fields of the record (a misspelt metric must not vanish silently)."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecordFormatError(f"{source}: unknown field(s) {unknown}; the fields are {sorted(known)}.")


def require_present(data: dict[str, Any], required: list[str], source: str) -> None:
    """Every required field must be present."""
    for name in required:
        if name not in data:
            raise RecordFormatError(f"{source}: '{name}' is required (fields found: {sorted(data)}).")


def check_license_choice(
    license_id: str | None, license_name: str | None, license_link: str | None, *, source: str, option_prefix: str = ""
) -> None:
    """Raise a RecordFormatError (a ValueError) unless the three values are a licence choice the Hub accepts: a
    lower-case Hub licence id (apache-2.0, mit, cc-by-nc-4.0, ...); with `other`, a `license_name` (an id such as
    my-license-1.0) and a `license_link` (LICENSE in the model repository, or a URL); name and link with nothing else.

    `source` starts the message (e.g. "training_summary.json: "); `option_prefix` "--" names them as flags.
    """
    names = {
        key: f"{option_prefix}{key}" if option_prefix else f"'{key}'" for key in ("license", "license_name", "license_link")
    }
    if license_id is None:
        if license_name is not None or license_link is not None:
            raise RecordFormatError(
                f"{source}{names['license_name']} / {names['license_link']} go with {names['license']} other, got no "
                f"{names['license']}."
            )
        return
    if not _HUB_LICENSE_ID.match(license_id):
        raise RecordFormatError(
            f"{source}{names['license']} must be a Hub licence id in lower case (e.g. apache-2.0, mit, cc-by-nc-4.0, "
            f"or other with a name and link; the list: https://huggingface.co/docs/hub/repositories-licenses), "
            f"got {license_id!r}."
        )
    if license_id != OTHER_LICENSE:
        if license_name is not None or license_link is not None:
            raise RecordFormatError(
                f"{source}{names['license_name']} / {names['license_link']} go only with {names['license']} other (the "
                f"Hub names and links its own licences), got {names['license']} {license_id!r} with them."
            )
        return
    if not license_name or not license_link:
        raise RecordFormatError(
            f"{source}{names['license']} other needs {names['license_name']} (an id such as my-license-1.0) and "
            f"{names['license_link']} (LICENSE in the repository, or a URL), got name {license_name!r} and link "
            f"{license_link!r}."
        )
    if not _LICENSE_NAME.match(license_name):
        raise RecordFormatError(
            f"{source}{names['license_name']} must be a lower-case id such as my-license-1.0, got {license_name!r}."
        )
    if not (license_link.startswith(("https://", "http://")) or _LICENSE_FILE.match(license_link)):
        raise RecordFormatError(
            f"{source}{names['license_link']} must be a URL (https://...) or the name of a file in the model "
            f"repository (e.g. LICENSE), got {license_link!r}."
        )
