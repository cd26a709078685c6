"""Regenerate the TypeScript code from the protos and the bundled widget.

Usage: ``python scripts/gen_web.py`` (regenerate) or ``--check`` (exit 1 when the
committed files differ from a fresh generation; used by CI).

1. ``buf generate`` with the local ``@bufbuild/protoc-gen-es`` (``clients/web/buf.gen.yaml``):
   every file under ``protos/talkwire/v1`` -> ``clients/web/src/gen``;
2. esbuild bundles ``clients/web/src/widget.ts`` (the client, the generated types and
   ``@bufbuild/protobuf``) into ``server/talkwire/server/web/static/widget.js``.

The tools come from ``clients/web/package-lock.json`` (``npm ci`` when they are missing).
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
WEB = ROOT / "clients" / "web"
GEN = WEB / "src" / "gen"
BUNDLE = ROOT / "server" / "talkwire" / "server" / "web" / "static" / "widget.js"
BIN = WEB / "node_modules" / ".bin"


def _run(*cmd: str | Path, cwd: Path = ROOT) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=cwd)  # noqa: S603


def _tools() -> None:
    if not (BIN / "buf").exists() or not (BIN / "esbuild").exists():
        _run("npm", "ci", "--silent", "--no-audit", "--no-fund", cwd=WEB)


def generate_types(out: Path) -> Path:
    """Run buf generate with ``out`` as the base directory; return the gen folder."""
    _run(BIN / "buf", "generate", "--template", WEB / "buf.gen.yaml", "-o", out)
    return out / GEN.relative_to(ROOT)


def bundle(out: Path) -> None:
    _run(
        BIN / "esbuild",
        WEB / "src" / "widget.ts",
        "--bundle",
        "--minify",
        "--format=iife",
        "--target=es2020",
        "--legal-comments=none",
        f"--outfile={out}",
        "--log-level=warning",
    )


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}


def _stale(fresh: dict[str, Path], committed: dict[str, Path]) -> list[str]:
    names = set(fresh) | set(committed)
    return sorted(
        n
        for n in names
        if n not in fresh
        or n not in committed
        or not filecmp.cmp(fresh[n], committed[n], shallow=False)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when generated code is stale")
    args = parser.parse_args()
    _tools()
    with tempfile.TemporaryDirectory() as tmp:
        fresh_gen = generate_types(Path(tmp))
        if not args.check:
            shutil.rmtree(GEN, ignore_errors=True)
            shutil.copytree(fresh_gen, GEN)
            bundle(BUNDLE)
            print(f"wrote {len(_files(GEN))} files to {GEN.relative_to(ROOT)} and the bundle")
            return 0
        stale = _stale(_files(fresh_gen), _files(GEN) if GEN.exists() else {})
        fresh_bundle = Path(tmp) / "widget.js"
        bundle(fresh_bundle)
        if not BUNDLE.exists() or not filecmp.cmp(fresh_bundle, BUNDLE, shallow=False):
            stale.append(str(BUNDLE.relative_to(ROOT)))
    if stale:
        print("generated web code is stale: " + ", ".join(stale))
        print("run: python scripts/gen_web.py")
        return 1
    print("generated web code is fresh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
