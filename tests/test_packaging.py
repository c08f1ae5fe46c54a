"""The installed package is whole: a wheel built from this tree carries the console's templates and
static files and the built C send loop (the Dockerfile installs with ``pip install .``, not from
the source tree)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_every_template_and_static_file(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    admin = ROOT / "relay" / "admin"
    wanted = {str(path.relative_to(ROOT)) for folder in ("templates", "static")
              for path in (admin / folder).iterdir() if path.is_file()}
    assert wanted and wanted <= names, sorted(wanted - names)
    assert any(name.startswith("relay/live/_fanout.") and name.endswith(".so") for name in names)
