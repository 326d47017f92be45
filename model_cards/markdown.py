"""Small Markdown and number formatting helpers for the model card."""

from __future__ import annotations

import html
import unicodedata
from typing import Any


def one_line(text: Any) -> str:
    """`text` on one line: newlines, tabs and other control or format characters become single spaces."""
    characters = (" " if unicodedata.category(character).startswith("C") else character for character in str(text))
    return " ".join("".join(characters).split())


def inline_text(text: Any) -> str:
    """A user string (a dataset name, ...) safe as plain text in the card's title or prose: on one line (no raw
    heading, metadata or paragraph it could start), HTML escaped (no `<img onerror=...>`), and the Markdown
    characters that open code, emphasis or links backslash-escaped."""
    escaped = html.escape(one_line(text), quote=False)
    return "".join("\\" + character if character in "\\`*[]" else character for character in escaped)


def escape_cell(text: Any) -> str:
    """Text safe inside one Markdown table cell: on one line, pipes escaped, and outside `code spans` the angle
    brackets that could open an HTML tag escaped."""
    parts = one_line(text).replace("|", "\\|").split("`")
    return "`".join(part if index % 2 else part.replace("<", "&lt;").replace(">", "&gt;") for index, part in enumerate(parts))


def table(rows: list[tuple[Any, ...]], header: tuple[str, ...] = ("", "")) -> str:
    """A Markdown table; cells are escaped. The default header is empty (a two-column fact table)."""
    lines = ["|" + "|".join(f" {name} " if name else " " for name in header) + "|", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def percent(value: float | None) -> str:
    """A fraction as a percentage with two decimals; 'n/a' for None."""
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def duration(seconds: float) -> str:
    """E.g. '12.3 s', '13 min 32 s', '1 h 02 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, seconds_left = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds_left:02d} s"


def plain_value(value: Any) -> str:
    """Readable text for a recorded value (floats as %g, lists and mappings comma-separated)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{name}={plain_value(item)}" for name, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(plain_value(item) for item in value)
    return str(value)
