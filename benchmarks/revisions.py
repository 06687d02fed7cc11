"""An earlier revision's code and schema beside the working tree's, for measurements of before and after in one run."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

from shared.db import MIGRATIONS_DIR


def module_and_migrations(rev: str, module_path: str, into: Path) -> tuple[ModuleType, Path]:
    """The module at ``module_path`` (e.g. services/ingress/adapters.py) and the migrations folder of git revision
    ``rev``, written under ``into``; the module imports the working tree's other modules."""
    migrations = MIGRATIONS_DIR.relative_to(Path.cwd()).as_posix()
    archive = subprocess.run(["git", "archive", rev, migrations], capture_output=True, check=True)
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(into, filter="data")
    source = subprocess.run(["git", "show", f"{rev}:{module_path}"], capture_output=True, check=True)
    name = f"{Path(module_path).stem}_at_{rev}"
    path = into / f"{name}.py"
    path.write_bytes(source.stdout)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module, into / migrations
