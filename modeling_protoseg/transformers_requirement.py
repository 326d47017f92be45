"""The oldest transformers this model code runs on, checked when the code is imported.

`save_pretrained` copies this file beside the weights with the rest of the model code, so a checkpoint loaded
with `trust_remote_code=True` on an older transformers fails with an error that names the version needed,
instead of an unrelated error deep inside transformers (4.x cannot even copy the code's relative imports).
Every module that is an entry point of the saved code (the configuration classes that `auto_map` names) imports
this module first, and imports every module of its relative-import tree directly: transformers 4.x copies only
the direct relative imports of the module it loads, and reads them all before running any of it.
"""

from __future__ import annotations

import re

import transformers

# The lower bound of `transformers` in this package's setup.cfg (a test keeps the two equal).
MINIMUM_TRANSFORMERS_VERSION = "5.20.0"


def _release(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a version string such as "5.20.0", "4.57.0.dev0" or "5.21"; (0, 0, 0) if unreadable."""
    match = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        return (0, 0, 0)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


def check_transformers_version(installed: str | None = None) -> None:
    """Raise an ImportError when `installed` (default: `transformers.__version__`) is older than
    `MINIMUM_TRANSFORMERS_VERSION`."""
    installed = transformers.__version__ if installed is None else installed
    if _release(installed) < _release(MINIMUM_TRANSFORMERS_VERSION):
        raise ImportError(
            f"This ProtoSeg model code needs transformers >= {MINIMUM_TRANSFORMERS_VERSION}, but transformers "
            f"{installed} is installed. Upgrade it: pip install -U 'transformers>={MINIMUM_TRANSFORMERS_VERSION}'"
        )


check_transformers_version()
