"""Hub tokens never reach a model card or a saved training summary."""

from __future__ import annotations

import re
from typing import Any

# Keys whose values are secrets: dropped wherever they appear.
SECRET_KEYS = frozenset({"hub_token", "token"})
_TOKEN_ARGUMENT = re.compile(r"(--(?:hub[_-])?token[= ])\S+")  # e.g. "--hub_token hf_..." in a command line
_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


def redact_secrets(value: Any) -> Any:
    """`value` with Hub tokens removed from every string in it (lists and dicts walked, secret keys dropped)."""
    if isinstance(value, str):
        return _TOKEN_VALUE.sub("<redacted>", _TOKEN_ARGUMENT.sub(r"\1<redacted>", value))
    if isinstance(value, dict):
        return {key: redact_secrets(item) for key, item in value.items() if key not in SECRET_KEYS}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(item) for item in value]
    return value
