"""What is published never leaks: Hub tokens and local paths never reach a model card or a saved summary.

- Tokens are removed by argument: the value of `--hub_token`, of any abbreviation argparse accepts for it
  (`--hub_tok X`, `--hub_t=X`) and of any option whose name holds "token", whatever the value looks like;
  `hf_...` strings anywhere; `HF_TOKEN=...` style environment assignments.
- Local paths (absolute, `~`, `./`, `../`) become `<local>/<their last part>`; Hub ids (`owner/name`) and
  plain names are kept. A path inside the working directory of the run becomes relative to it.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

# Keys whose values are secrets: dropped wherever they appear.
SECRET_KEYS = frozenset({"hub_token", "token"})
REDACTED = "<redacted>"
LOCAL = "<local>"

_SECRET_OPTION = r"--(?:[\w-]*token[\w-]*|hub[_-]t[\w-]*)"  # "--hub_token", "--hub_tok", "--token", ...
_TOKEN_ARGUMENT = re.compile(rf"({_SECRET_OPTION}(?:=|\s+))(?:\"[^\"]*\"|'[^']*'|\S+)")
_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
_TOKEN_ENVIRONMENT = re.compile(r"\b((?:HF_TOKEN|HUGGING_FACE_HUB_TOKEN|HF_HUB_TOKEN)=)(?:\"[^\"]*\"|'[^']*'|\S+)")
_ABSOLUTE_PATH_IN_TEXT = re.compile(r"(?<![\w<>/.~-])(?:~|\.\.?)?/[^\s'\"]*|\b[A-Za-z]:\\[^\s'\"]*")
_SHELL_SAFE = re.compile(r"^[\w@%+=:,./<>\[\]-]+$")


def _is_secret_option(argument: str) -> bool:
    """True for `--hub_token`, an abbreviation argparse would accept for it (`--hub_t`, `--hub_tok`, ...), and any
    option whose name holds "token" (`--token`, `--hf-token`)."""
    if not argument.startswith("--"):
        return False
    name = argument[2:].split("=", 1)[0].replace("-", "_")
    return "token" in name or (len(name) > len("hub_") and "hub_token".startswith(name))


def is_local_path(value: str) -> bool:
    """A path of the machine that ran: absolute (POSIX or Windows), under `~`, or starting `./` / `../`."""
    return value.startswith(("/", "~", "./", "../", ".\\", "..\\")) or bool(PureWindowsPath(value).drive)


def publishable_path(value: str | None, *, working_directory: str | os.PathLike[str] | None = None) -> str | None:
    """`value` as it may be published: a local path becomes `<local>/<last part>` (relative to
    `working_directory` when it lies inside it); Hub ids, plain names and other relative paths are kept."""
    if not isinstance(value, str) or not is_local_path(value):
        return value
    if working_directory is not None and value.startswith("/"):
        try:
            return Path(os.path.normpath(value)).relative_to(Path(working_directory).resolve()).as_posix()
        except ValueError:
            pass
    last_part = re.split(r"[\\/]", value.rstrip("/\\"))[-1]
    return f"{LOCAL}/{last_part}" if last_part not in ("", ".", "..", "~") else LOCAL


def publishable_command(
    argv: Sequence[str], *, working_directory: str | os.PathLike[str] | None = None
) -> str:
    """A command line (`sys.argv`) as it may be published: secret option values redacted by argument, local paths
    shown as `<local>/<last part>`, parts quoted for the shell where needed."""
    parts: list[str] = []
    redact_next = False
    for argument in argv:
        if redact_next:
            parts.append(REDACTED)
            redact_next = False
            continue
        if _is_secret_option(argument):
            if "=" in argument:
                parts.append(argument.split("=", 1)[0] + "=" + REDACTED)
            else:
                parts.append(argument)
                redact_next = True
            continue
        if argument.startswith("--") and "=" in argument:
            option, value = argument.split("=", 1)
            argument = f"{option}={publishable_path(value, working_directory=working_directory)}"
        else:
            argument = publishable_path(argument, working_directory=working_directory)
        parts.append(_TOKEN_VALUE.sub(REDACTED, argument))
    return " ".join(part if _SHELL_SAFE.match(part) else shlex.quote(part) for part in parts)


def redact_secrets(value: Any) -> Any:
    """`value` with Hub tokens removed from every string in it (lists and dicts walked, secret keys dropped)."""
    if isinstance(value, str):
        value = _TOKEN_ARGUMENT.sub(rf"\1{REDACTED}", value)
        value = _TOKEN_ENVIRONMENT.sub(rf"\1{REDACTED}", value)
        return _TOKEN_VALUE.sub(REDACTED, value)
    if isinstance(value, dict):
        return {key: redact_secrets(item) for key, item in value.items() if key not in SECRET_KEYS}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(item) for item in value]
    return value


def redact_command(command: str | None) -> str | None:
    """A command line already joined into one string, as it may be published: tokens redacted (by argument
    and by value) and local paths shown as `<local>/<last part>`."""
    if not command:
        return command
    try:
        return publishable_command(shlex.split(redact_secrets(command)))
    except ValueError:  # unbalanced quotes: no argument structure to rely on
        redacted = redact_secrets(command)
        return _ABSOLUTE_PATH_IN_TEXT.sub(lambda match: publishable_path(match.group(0)) or LOCAL, redacted)
