//! How long analysing a model takes against its size, nested bodies included: the bound on
//! what one upload can cost MES's calc workers.
//!
//! `cargo bench -p domain --bench stl_analysis` writes each model as a binary STL under
//! `target/stl-bench/` and prints, per model, its triangles, bodies and size and the median
//! time of `domain::stl::analyze_bytes` (parse + analyse) over a few runs.
//! `crates/domain/benches/trimesh_compare.py` then times trimesh on the same files; both go
//! into docs/benchmarks.md.

use std::f64::consts::PI;
use std::path::PathBuf;
use std::time::Instant;

use domain::stl::{Triangle, analyze_bytes, to_binary};

/// A closed UV sphere of about `triangles` triangles; inside out when `inward`.
fn sphere(centre: [f64; 3], radius: f64, triangles: usize, inward: bool) -> Vec<Triangle> {
    // 2·rings·segments triangles with segments = 2·rings.
    let rings = ((triangles as f64 / 4.0).sqrt().round() as usize).max(3);
    let segments = 2 * rings;
    let point = |ring: usize, segment: usize| -> [f32; 3] {
        let theta = PI * ring as f64 / rings as f64;
        let phi = 2.0 * PI * (segment % segments) as f64 / segments as f64;
        [
            (centre[0] + radius * theta.sin() * phi.cos()) as f32,
            (centre[1] + radius * theta.sin() * phi.sin()) as f32,
            (centre[2] + radius * theta.cos()) as f32,
        ]
    };
    let mut out = Vec::with_capacity(2 * rings * segments);
    for ring in 0..rings {
        for segment in 0..segments {
            let (a, b) = (point(ring, segment), point(ring, segment + 1));
            let (c, d) = (point(ring + 1, segment), point(ring + 1, segment + 1));
            let mut faces = Vec::with_capacity(2);
            if ring != 0 {
                faces.push([a, c, b]);
            }
            if ring != rings - 1 {
                faces.push([b, c, d]);
            }
            for mut face in faces {
                if inward {
                    face.swap(1, 2);
                }
                out.push(face);
            }
        }
    }
    out
}

fn models() -> Vec<(&'static str, Vec<Triangle>)> {
    let mut models = vec![
        ("sphere-10k", sphere([0.0; 3], 10.0, 10_000, false)),
        ("sphere-100k", sphere([0.0; 3], 10.0, 100_000, false)),
        ("sphere-1m", sphere([0.0; 3], 10.0, 1_000_000, false)),
    ];
    // The attack reported in issue 21: a 12 MB model of many nested bodies (here 1,000 nested
    // shells of 240 triangles, the most bodies a model may have).
    let mut shells = Vec::new();
    for k in 0..1_000 {
        shells.extend(sphere([0.0; 3], 100.0 - 0.09 * k as f64, 240, k % 2 == 1));
    }
    models.push(("nested-1000-shells", shells));
    // A fine outer body with 999 small bodies (cavities) inside it.
    let mut inside = sphere([0.0; 3], 100.0, 200_000, false);
    for k in 0..999 {
        let (x, y, z) = ((k % 10) as f64, ((k / 10) % 10) as f64, (k / 100) as f64);
        inside.extend(sphere(
            [(x - 4.5) * 12.0, (y - 4.5) * 12.0, (z - 4.5) * 12.0],
            3.0,
            48,
            false,
        ));
    }
    models.push(("fine-body-999-cavities", inside));
    models
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/stl-bench");
    std::fs::create_dir_all(&dir).expect("target/stl-bench");
    println!("model\ttriangles\tbodies\tcavities\tMB\tmedian ms");
    for (name, triangles) in models() {
        let bytes = to_binary(&triangles);
        std::fs::write(dir.join(format!("{name}.stl")), &bytes).expect("write model");
        let mut times = Vec::new();
        let mut report = None;
        for _ in 0..5 {
            let started = Instant::now();
            let analysed = analyze_bytes(std::hint::black_box(&bytes));
            times.push(started.elapsed().as_secs_f64() * 1e3);
            report = Some(analysed);
        }
        times.sort_by(f64::total_cmp);
        let report = report
            .expect("ran")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        println!(
            "{name}\t{}\t{}\t{}\t{:.1}\t{:.1}",
            report.triangles,
            report.bodies,
            report.cavities,
            bytes.len() as f64 / 1e6,
            times[times.len() / 2]
        );
    }
    println!("models written to {}", dir.display());
}
