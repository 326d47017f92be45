"""Run a script in a fresh `python -I` that cannot import this repository, for the remote-code checks.

`-I` keeps the checkout off `sys.path` (no PYTHONPATH, no current directory, no user site); the
import blocker prepended to every script also rules out an editable install of the repository, so
a checkpoint can only load through the code that `save_pretrained` copied next to its weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Top-level packages of this repository that a remote-code check must never import.
REPOSITORY_PACKAGES = ("modeling_protoseg", "model_cards", "training", "protoseg_tools")

IMPORT_BLOCKER = f"""
import importlib.abc as _importlib_abc
import sys as _sys

class _BlockRepositoryPackages(_importlib_abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in {REPOSITORY_PACKAGES!r}:
            raise ModuleNotFoundError(f"{{fullname}} is blocked in this check", name=fullname)
        return None

_sys.meta_path.insert(0, _BlockRepositoryPackages())
"""


def run_python_without_repository(
    script: str,
    *arguments: str,
    cwd: Path,
    environment: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run `script` (dedented) with `arguments` in `python -I` behind the import blocker, offline.

    Arguments:
        script: Python source; `sys.argv[1:]` are `arguments`.
        cwd: working directory (relative paths in the script resolve against it).
        environment: extra environment variables (e.g. HF_MODULES_CACHE), over offline defaults.
        timeout: seconds before the run is killed.
    Returns:
        the completed process, with text stdout and stderr captured.
    """
    process_environment = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
    process_environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(environment or {}))
    return subprocess.run(
        [sys.executable, "-I", "-c", IMPORT_BLOCKER + textwrap.dedent(script), *arguments],
        cwd=cwd,
        env=process_environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
