"""Generate the Python protocol modules from the .proto files under proto/overcast.

    python proto/generate.py           # write *_pb2.py, *_pb2.pyi, *_pb2_grpc.py next to the .proto files
    python proto/generate.py --check   # exit 1 and name the stale files if the committed ones differ

Importable: ``generate(out_dir)`` writes the modules into ``out_dir`` (mirroring the
``overcast/...`` layout) and returns the paths it wrote; the staleness test uses it.

Output is deterministic: protoc is run once over the sorted list of .proto files, given as
paths relative to proto/ (so no absolute paths end up in the descriptors), and the result
depends only on the .proto sources and the grpcio-tools version.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "overcast"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """Every .proto under proto/overcast, relative to proto/, sorted."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PACKAGE_DIR.rglob("*.proto"))


def expected_outputs(protos: list[Path]) -> list[Path]:
    """The generated files (relative to the output root) for the given .proto files."""
    return sorted(
        proto.with_name(proto.stem + suffix) for proto in protos for suffix in GENERATED_SUFFIXES
    )


def committed_outputs() -> list[Path]:
    """Generated-looking files currently under proto/overcast, relative to proto/."""
    found = {
        p.relative_to(PROTO_ROOT)
        for suffix in GENERATED_SUFFIXES
        for p in PACKAGE_DIR.rglob("*" + suffix)
    }
    return sorted(found)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over every .proto, writing into ``out_dir``; return the written paths."""
    # Imported here so `--help` works without grpcio-tools installed.
    import grpc_tools
    from grpc_tools import protoc

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = proto_files()
    if not protos:
        return []
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(p.as_posix() for p in protos),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}: {' '.join(args)}")
    outputs = [out_dir / rel for rel in expected_outputs(protos)]
    missing = [str(p) for p in outputs if not p.is_file()]
    if missing:
        raise RuntimeError(f"protoc did not write: {', '.join(missing)}")
    return outputs


def stale_files() -> list[Path]:
    """Committed generated files (relative to proto/) that differ from a fresh generation.

    Includes files that are missing and generated files whose .proto no longer exists.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        fresh = {p.relative_to(tmp_root): p.read_bytes() for p in generate(tmp_root)}
    stale: set[Path] = set()
    for rel, content in fresh.items():
        committed = PROTO_ROOT / rel
        if not committed.is_file() or committed.read_bytes() != content:
            stale.add(rel)
    stale.update(rel for rel in committed_outputs() if rel not in fresh)
    return sorted(stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed generated files are stale",
    )
    ns = parser.parse_args(argv)
    if ns.check:
        stale = stale_files()
        if stale:
            print("stale generated files (run `python proto/generate.py`):", file=sys.stderr)
            for rel in stale:
                print(f"  proto/{rel.as_posix()}", file=sys.stderr)
            return 1
        print("generated files are up to date")
        return 0
    for path in generate(PROTO_ROOT):
        print(f"wrote proto/{path.relative_to(PROTO_ROOT).as_posix()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
