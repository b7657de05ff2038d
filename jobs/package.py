"""The artifacts `make package` builds for spark-submit (beside the wheel): the zip that `--py-files` ships to
executors (our packages with their data files) and the main file spark-submit runs."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

PACKAGES = ("jobs", "udfs", "schemas", "conf")
PYFILES_ZIP = "megascience_pyfiles.zip"
SUBMIT_SCRIPT = "megascience_submit.py"


def installed_root() -> Path:
    """Where this process imports our packages from: a directory holding jobs/, udfs/, ... or a --py-files zip."""
    import jobs

    return Path(jobs.__file__).resolve().parents[1]


def build_pyfiles_zip(target: str | Path, source_root: str | Path = ".") -> Path:
    root = Path(source_root).resolve()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            for path in sorted((root / package).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    archive.write(path, path.relative_to(root).as_posix())
    return target


def build_submit_artifacts(dist: str | Path, source_root: str | Path = ".") -> tuple[Path, Path]:
    """dist/megascience_pyfiles.zip and dist/megascience_submit.py (a copy of jobs/submit.py: spark-submit runs a
    file, not a module inside the zip)."""
    dist = Path(dist)
    archive = build_pyfiles_zip(dist / PYFILES_ZIP, source_root)
    script = dist / SUBMIT_SCRIPT
    shutil.copy(Path(source_root) / "jobs" / "submit.py", script)
    return archive, script


if __name__ == "__main__":
    for artifact in build_submit_artifacts(sys.argv[1] if len(sys.argv) > 1 else "dist"):
        print(artifact)
