#!/usr/bin/env python3
"""Times trimesh on the models `cargo bench -p domain --bench stl_analysis` wrote, doing what
domain::stl::analyze does: load (merging vertices), check the mesh is watertight, split it into
bodies and measure the volume. Run after the Rust benchmark:

    python3 -m venv /tmp/trimesh && /tmp/trimesh/bin/pip install trimesh numpy scipy networkx
    /tmp/trimesh/bin/python crates/domain/benches/trimesh_compare.py

Prints the median of five runs per model, in the Rust benchmark's format."""

import pathlib
import statistics
import sys
import time

import trimesh

root = pathlib.Path(__file__).resolve().parents[3] / "target" / "stl-bench"
models = sorted(root.glob("*.stl"))
if not models:
    sys.exit(f"no models in {root}: run cargo bench -p domain --bench stl_analysis first")
print(f"trimesh {trimesh.__version__}")
print("model\ttriangles\tbodies\tmedian ms")
for path in models:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        mesh = trimesh.load(path, force="mesh")
        watertight = mesh.is_watertight
        bodies = mesh.split(only_watertight=False)
        volume = sum(abs(body.volume) for body in bodies) if watertight else None
        times.append((time.perf_counter() - started) * 1e3)
    print(f"{path.stem}\t{len(mesh.faces)}\t{len(bodies)}\t{statistics.median(times):.1f}")
