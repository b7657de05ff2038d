"""The artifacts `make package` builds for spark-submit (beside the wheel): the zip that `--py-files` ships to
executors (our packages with their data files) and the main file spark-submit runs."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

NAMESPACE = "megascience"
PACKAGES = ("jobs", "udfs", "schemas", "conf")  # folders of the repository, megascience.<name> when installed
PYFILES_ZIP = "megascience_pyfiles.zip"
SUBMIT_SCRIPT = "megascience_submit.py"


def installed_root() -> Path:
    """The folder holding our packages' sources (jobs/, udfs/, ...): the repository in an editable install."""
    import megascience.jobs

    return Path(megascience.jobs.__file__).resolve().parents[1]


def build_pyfiles_zip(target: str | Path, source_root: str | Path = ".") -> Path:
    root = Path(source_root).resolve()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        # zipimport finds a namespace package (no __init__.py) only through its directory entry
        archive.writestr(f"{NAMESPACE}/", b"")
        for package in PACKAGES:
            for path in sorted((root / package).rglob("*")):
                if "__pycache__" in path.parts or path.suffix == ".pyc":
                    continue
                name = f"{NAMESPACE}/{path.relative_to(root).as_posix()}"
                if path.is_dir():
                    archive.writestr(name + "/", b"")
                else:
                    archive.write(path, name)
    return target


def build_submit_artifacts(dist: str | Path, source_root: str | Path = ".") -> tuple[Path, Path]:
    """dist/megascience_pyfiles.zip and dist/megascience_submit.py (a copy of jobs/cli/submit.py: spark-submit runs
    a file, not a module inside the zip)."""
    dist = Path(dist)
    archive = build_pyfiles_zip(dist / PYFILES_ZIP, source_root)
    script = dist / SUBMIT_SCRIPT
    shutil.copy(Path(source_root) / "jobs" / "cli" / "submit.py", script)
    return archive, script


if __name__ == "__main__":
    for artifact in build_submit_artifacts(sys.argv[1] if len(sys.argv) > 1 else "dist"):
        print(artifact)
