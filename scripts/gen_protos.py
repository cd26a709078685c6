"""Regenerate the committed protobuf / gRPC Python code and typed stubs.

Usage: ``python scripts/gen_protos.py`` (regenerate) or ``--check`` (exit 1
when the committed files differ from a fresh generation; used by CI).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = PROTOS / "talkwire" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> list[Path]:
    sources = sorted(PACKAGE.glob("*.proto"))
    bindir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(s.relative_to(PROTOS)) for s in sources],
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)  # noqa: S603
    return sorted(p for p in (out / "talkwire" / "v1").iterdir() if p.name.endswith(SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when generated code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = sorted(p for p in PACKAGE.iterdir() if p.name.endswith(SUFFIXES))
        if args.check:
            stale = [p.name for p in fresh if not (PACKAGE / p.name).exists()]
            stale += [
                p.name
                for p in fresh
                if (PACKAGE / p.name).exists()
                and not filecmp.cmp(p, PACKAGE / p.name, shallow=False)
            ]
            stale += [p.name for p in committed if p.name not in {f.name for f in fresh}]
            if stale:
                print("generated code is stale: " + ", ".join(sorted(set(stale))))
                print("run: python scripts/gen_protos.py")
                return 1
            print(f"generated code is fresh ({len(fresh)} files)")
            return 0
        for p in committed:
            p.unlink()
        for p in fresh:
            shutil.copy2(p, PACKAGE / p.name)
        print(f"wrote {len(fresh)} files to {PACKAGE.relative_to(ROOT)}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
