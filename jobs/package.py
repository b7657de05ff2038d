"""Build the zip that `spark-submit --py-files` ships to executors: our packages with their data files."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PACKAGES = ("jobs", "udfs", "schemas", "conf")


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


if __name__ == "__main__":
    print(build_pyfiles_zip(sys.argv[1] if len(sys.argv) > 1 else "dist/megascience_pyfiles.zip"))
