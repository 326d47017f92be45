"""Small Markdown and number formatting helpers for the model card."""

from __future__ import annotations

from typing import Any


def escape_cell(text: Any) -> str:
    """Text safe inside one Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


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
