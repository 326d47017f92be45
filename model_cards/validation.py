"""Type and range checks for the records training hands to the model card, with errors that name the field.

`check_record_fields(record, source)` checks (and normalises: ints to float where a float is
expected, tuples to lists, dicts to nested records) every field of a dataclass against its type
hints; the `require_*` helpers check ranges. All raise `RecordFormatError`. No torch.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Union


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
