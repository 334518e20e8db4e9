//! Reading STL models and measuring them.
//!
//! [`parse`] reads binary and ASCII STL. A binary file is recognised by its size (84 bytes plus
//! 50 per triangle declared in the header), not by its first bytes: real exporters write binary
//! files whose 80-byte header starts with `solid`. ASCII files may hold several `solid` blocks.
//!
//! [`analyze`] decides whether the model can be made and how much metal it takes:
//!
//! 1. Vertices are welded: STL repeats every vertex per triangle, and exporters do not always
//!    write the same vertex the same way (`0` and `-2.7e-16`, say). Coordinates are snapped to a
//!    grid of [`WELD_GRID_MM`] (the merge tolerance trimesh uses, far below the resolution of
//!    an `f32` at millimetre scale), and vertices on the same grid point are one. Triangles
//!    that collapse to a line or a point after welding carry no volume and are set aside.
//! 2. The model is a closed solid when every edge is shared by exactly two triangles. A hole
//!    (an edge used once) or a fin (an edge used three times or more) makes it not closed.
//! 3. Each connected body is oriented consistently by walking across shared edges (some
//!    exporters flip individual triangles); a body that cannot be oriented is not a solid.
//! 4. A body's volume is the sum of the signed volumes of the tetrahedra formed by each
//!    triangle and a reference point (the body's bounding-box centre, which keeps the terms
//!    small and the sum accurate), taken positive. A body inside another one an odd number of
//!    times deep is a cavity and is subtracted: a hollow ring weighs what its shell weighs.
//!
//! Every step is near-linear in the number of triangles, so no model can hold a calculation for
//! long (docs/benchmarks.md measures it against trimesh). The nesting check casts one ray per
//! body and finds the triangles it may cross through a grid of the rays (see
//! [`nesting_parities`]) instead of testing every body against every other. Models beyond
//! [`MAX_TRIANGLES`] or [`MAX_BODIES`], or nested so that the check would exceed
//! [`NESTING_BUDGET`], are refused at once with a reason the customer can act on.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::{Deserialize, Serialize};

/// One triangle: three vertices in millimetres.
pub type Triangle = [[f32; 3]; 3];

/// The triangles of a model as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    pub triangles: Vec<Triangle>,
    /// `solid` blocks in an ASCII file; 1 for a binary file.
    pub solids: usize,
}

/// What [`analyze`] measured. Units are those of the file, taken as millimetres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshReport {
    /// Triangles that carry area (degenerate ones are not counted).
    pub triangles: usize,
    /// Closed bodies, cavities included.
    pub bodies: usize,
    /// Bodies that are cavities inside another body.
    pub cavities: usize,
    /// Enclosed volume in mm³ (cavities subtracted).
    pub volume_mm3: f64,
    /// Size of the bounding box along x, y and z, in mm.
    pub bounding_box_mm: [f64; 3],
    pub surface_area_mm2: f64,
}

/// Why a model cannot be priced. The message speaks to the customer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StlError {
    #[error("the model contains no triangles; export the part as a solid STL and upload it again")]
    Empty,
    #[error("the file is not a readable STL model: {0}")]
    Unreadable(String),
    #[error(
        "the model is not a closed solid: {open_edges} edges border a hole and {non_manifold_edges} edges are shared by more than two faces; close the holes (make the mesh watertight) and upload it again"
    )]
    NotClosed {
        open_edges: usize,
        non_manifold_edges: usize,
    },
    #[error(
        "the model's surface has no inside and outside (it is not orientable); repair the mesh into a solid and upload it again"
    )]
    NotOrientable,
    #[error("the model encloses no volume; export the part as a solid and upload it again")]
    ZeroVolume,
    #[error(
        "the model has {triangles} triangles; models of at most {MAX_TRIANGLES} are priced (export it at a coarser resolution and upload it again)"
    )]
    TooManyTriangles { triangles: u64 },
    #[error(
        "the model is made of {bodies} separate bodies; models of at most {MAX_BODIES} are priced (join the parts into fewer solids and upload it again)"
    )]
    TooManyBodies { bodies: usize },
    #[error(
        "the model's bodies overlap and nest too intricately to be measured; join the parts into fewer solids and upload it again"
    )]
    TooIntricate,
}

impl StlError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "stl_empty",
            Self::Unreadable(_) => "stl_unreadable",
            Self::NotClosed { .. } | Self::NotOrientable => "stl_not_closed",
            Self::ZeroVolume => "stl_zero_volume",
            Self::TooManyTriangles { .. } => "stl_too_many_triangles",
            Self::TooManyBodies { .. } => "stl_too_many_bodies",
            Self::TooIntricate => "stl_too_intricate",
        }
    }
}

/// Most triangles a priced model may have: twice what the largest upload Shop takes by default
/// (50 MiB, about a million binary triangles) can hold, and far beyond any piece of jewellery.
pub const MAX_TRIANGLES: u64 = 2_000_000;

/// Most separate bodies (cavities included) a priced model may have. A ring with a few hundred
/// set stones modelled as bodies of their own stays well inside it.
pub const MAX_BODIES: usize = 1_000;

/// Most units of work the nesting check may do (a unit is one grid cell visited or one ray
/// tested against one triangle): about a quarter of a second on the development machine
/// (docs/benchmarks.md). Closed bodies nested as real models nest them use a small fraction.
pub const NESTING_BUDGET: u64 = 50_000_000;

const HEADER: usize = 80;
const BINARY_PREFIX: usize = HEADER + 4;
const BINARY_TRIANGLE: usize = 50;

/// Reads a binary or ASCII STL file. A file without triangles parses (as an empty mesh);
/// whether it can be made is [`analyze`]'s question.
pub fn parse(bytes: &[u8]) -> Result<Mesh, StlError> {
    let ascii_error = if looks_ascii(bytes) {
        match parse_ascii(bytes) {
            Ok(mesh) => return Ok(mesh),
            Err(err) => Some(err),
        }
    } else {
        None
    };
    if bytes.len() >= BINARY_PREFIX {
        let declared =
            u32::from_le_bytes(bytes[HEADER..BINARY_PREFIX].try_into().expect("4 bytes"));
        let needed = BINARY_PREFIX as u64 + BINARY_TRIANGLE as u64 * u64::from(declared);
        if needed <= bytes.len() as u64 {
            if u64::from(declared) > MAX_TRIANGLES {
                return Err(StlError::TooManyTriangles {
                    triangles: u64::from(declared),
                });
            }
            return parse_binary(bytes, declared as usize);
        }
        if ascii_error.is_none() {
            return Err(StlError::Unreadable(format!(
                "the binary header declares {declared} triangles ({needed} bytes) but the file has {} bytes; it is truncated or not an STL file",
                bytes.len()
            )));
        }
    }
    Err(ascii_error.unwrap_or_else(|| {
        StlError::Unreadable(format!(
            "{} bytes is too short for an STL file",
            bytes.len()
        ))
    }))
}

fn looks_ascii(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    bytes[start..]
        .get(..5)
        .is_some_and(|word| word.eq_ignore_ascii_case(b"solid"))
}

fn parse_binary(bytes: &[u8], count: usize) -> Result<Mesh, StlError> {
    let mut triangles = Vec::with_capacity(count);
    for (index, record) in bytes[BINARY_PREFIX..]
        .chunks_exact(BINARY_TRIANGLE)
        .take(count)
        .enumerate()
    {
        let float = |at: usize| f32::from_le_bytes(record[at..at + 4].try_into().expect("4 bytes"));
        let mut triangle = [[0.0f32; 3]; 3];
        for (v, vertex) in triangle.iter_mut().enumerate() {
            for (axis, value) in vertex.iter_mut().enumerate() {
                // Skip the 12-byte normal; vertices follow.
                *value = float(12 + v * 12 + axis * 4);
            }
        }
        if triangle.iter().flatten().any(|c| !c.is_finite()) {
            return Err(StlError::Unreadable(format!(
                "triangle {} has a coordinate that is not a number",
                index + 1
            )));
        }
        triangles.push(triangle);
    }
    Ok(Mesh {
        triangles,
        solids: 1,
    })
}

fn parse_ascii(bytes: &[u8]) -> Result<Mesh, StlError> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        StlError::Unreadable("the text file contains bytes that are not text".into())
    })?;
    let mut triangles = Vec::new();
    let mut solids = 0;
    let mut in_solid = false;
    let mut in_loop = false;
    let mut loop_vertices: Vec<[f32; 3]> = Vec::with_capacity(3);
    let fail = |line: usize, what: &str| Err(StlError::Unreadable(format!("line {line}: {what}")));
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let mut words = raw.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword.to_ascii_lowercase().as_str() {
            "solid" => {
                if in_solid {
                    return fail(line, "`solid` inside another solid");
                }
                in_solid = true;
                solids += 1;
            }
            "endsolid" => {
                if !in_solid || in_loop {
                    return fail(line, "unexpected `endsolid`");
                }
                in_solid = false;
            }
            "facet" | "endfacet" if in_solid && !in_loop => {}
            "outer" if in_solid && !in_loop => {
                in_loop = true;
                loop_vertices.clear();
            }
            "vertex" if in_loop => {
                let mut vertex = [0.0f32; 3];
                for value in &mut vertex {
                    *value = match words.next().map(str::parse::<f32>) {
                        Some(Ok(v)) if v.is_finite() => v,
                        _ => return fail(line, "a vertex needs three finite numbers"),
                    };
                }
                loop_vertices.push(vertex);
            }
            "endloop" if in_loop => {
                in_loop = false;
                if loop_vertices.len() < 3 {
                    return fail(line, "a facet needs at least three vertices");
                }
                // Polygons with more than three vertices are split into a fan of triangles.
                for i in 1..loop_vertices.len() - 1 {
                    triangles.push([loop_vertices[0], loop_vertices[i], loop_vertices[i + 1]]);
                }
                if triangles.len() as u64 > MAX_TRIANGLES {
                    return Err(StlError::TooManyTriangles {
                        triangles: triangles.len() as u64,
                    });
                }
            }
            other => return fail(line, &format!("unexpected `{other}`")),
        }
    }
    if in_solid {
        return Err(StlError::Unreadable(
            "the file ends inside a solid (no `endsolid`)".into(),
        ));
    }
    Ok(Mesh { triangles, solids })
}

/// `triangles` as a binary STL file (a blank header, no normals): for tools, tests and
/// benchmarks that make models.
pub fn to_binary(triangles: &[Triangle]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(BINARY_PREFIX + BINARY_TRIANGLE * triangles.len());
    bytes.resize(HEADER, b' ');
    bytes.extend_from_slice(&(triangles.len() as u32).to_le_bytes());
    for triangle in triangles {
        bytes.extend_from_slice(&[0u8; 12]);
        for vertex in triangle {
            for c in vertex {
                bytes.extend_from_slice(&c.to_le_bytes());
            }
        }
        bytes.extend_from_slice(&[0, 0]);
    }
    bytes
}

/// Parses and analyses in one step: what the services call.
pub fn analyze_bytes(bytes: &[u8]) -> Result<MeshReport, StlError> {
    analyze(&parse(bytes)?)
}

/// Vertices closer than this (per axis, in mm) are the same vertex.
pub const WELD_GRID_MM: f64 = 1e-8;

/// A vertex key: the coordinates snapped to the weld grid.
fn key(vertex: [f32; 3]) -> [i64; 3] {
    vertex.map(|c| (f64::from(c) / WELD_GRID_MM).round() as i64)
}

/// Welded triangles: indices into `vertices`.
struct Welded {
    vertices: Vec<[f64; 3]>,
    faces: Vec<[u32; 3]>,
}

fn weld(mesh: &Mesh) -> Welded {
    let mut index: HashMap<[i64; 3], u32> = HashMap::with_capacity(mesh.triangles.len());
    let mut vertices = Vec::with_capacity(mesh.triangles.len() / 2 + 3);
    let mut faces = Vec::with_capacity(mesh.triangles.len());
    for triangle in &mesh.triangles {
        let face = triangle.map(|vertex| {
            *index.entry(key(vertex)).or_insert_with(|| {
                vertices.push(vertex.map(f64::from));
                (vertices.len() - 1) as u32
            })
        });
        if face[0] != face[1] && face[1] != face[2] && face[0] != face[2] {
            faces.push(face);
        }
    }
    Welded { vertices, faces }
}

/// Per undirected edge: how many faces use it, and the first two (face, forward) uses, where
/// `forward` means the face walks the edge from its lower to its higher vertex index.
#[derive(Clone, Copy)]
struct EdgeUse {
    count: u32,
    uses: [(u32, bool); 2],
}

fn edges(faces: &[[u32; 3]]) -> HashMap<(u32, u32), EdgeUse> {
    let mut edges: HashMap<(u32, u32), EdgeUse> = HashMap::with_capacity(faces.len() * 3 / 2 + 1);
    for (f, face) in faces.iter().enumerate() {
        for i in 0..3 {
            let (a, b) = (face[i], face[(i + 1) % 3]);
            let (key, forward) = if a < b {
                ((a, b), true)
            } else {
                ((b, a), false)
            };
            match edges.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(EdgeUse {
                        count: 1,
                        uses: [(f as u32, forward), (u32::MAX, false)],
                    });
                }
                Entry::Occupied(mut slot) => {
                    let edge = slot.get_mut();
                    if edge.count == 1 {
                        edge.uses[1] = (f as u32, forward);
                    }
                    edge.count += 1;
                }
            }
        }
    }
    edges
}

/// One connected, consistently oriented body.
struct Body {
    /// Faces with their orientation: `true` when the face must be flipped.
    faces: Vec<(u32, bool)>,
    min: [f64; 3],
    max: [f64; 3],
    /// Signed volume with the chosen orientation; positive after [`orient_outward`].
    volume: f64,
}

/// Groups faces into bodies across shared edges, orienting each face consistently with its
/// neighbours. `None` when a body cannot be oriented.
fn bodies(welded: &Welded, edges: &HashMap<(u32, u32), EdgeUse>) -> Option<Vec<Body>> {
    let faces = &welded.faces;
    // flip[f]: None = not reached yet.
    let mut flip: Vec<Option<bool>> = vec![None; faces.len()];
    let mut result = Vec::new();
    let mut stack = Vec::new();
    for seed in 0..faces.len() {
        if flip[seed].is_some() {
            continue;
        }
        flip[seed] = Some(false);
        stack.push(seed as u32);
        let mut members = Vec::new();
        while let Some(f) = stack.pop() {
            let f_flip = flip[f as usize].expect("visited");
            members.push((f, f_flip));
            let face = faces[f as usize];
            for i in 0..3 {
                let (a, b) = (face[i], face[(i + 1) % 3]);
                let key = if a < b { (a, b) } else { (b, a) };
                let edge = edges[&key];
                let (mine, other) = if edge.uses[0].0 == f {
                    (edge.uses[0], edge.uses[1])
                } else {
                    (edge.uses[1], edge.uses[0])
                };
                // Consistent neighbours walk a shared edge in opposite directions.
                let my_direction = mine.1 ^ f_flip;
                let wanted_flip = other.1 ^ !my_direction;
                match flip[other.0 as usize] {
                    None => {
                        flip[other.0 as usize] = Some(wanted_flip);
                        stack.push(other.0);
                    }
                    Some(existing) if existing != wanted_flip => return None,
                    Some(_) => {}
                }
            }
        }
        result.push(measure(welded, members));
    }
    Some(result)
}

fn measure(welded: &Welded, faces: Vec<(u32, bool)>) -> Body {
    let mut min = [f64::INFINITY; 3];
    let mut max = [f64::NEG_INFINITY; 3];
    for &(f, _) in &faces {
        for &v in &welded.faces[f as usize] {
            let p = welded.vertices[v as usize];
            for axis in 0..3 {
                min[axis] = min[axis].min(p[axis]);
                max[axis] = max[axis].max(p[axis]);
            }
        }
    }
    let centre = [0, 1, 2].map(|axis| (min[axis] + max[axis]) / 2.0);
    let mut six_volume = 0.0;
    for &(f, flipped) in &faces {
        let [a, b, c] = welded.faces[f as usize].map(|v| sub(welded.vertices[v as usize], centre));
        let term = dot(a, cross(b, c));
        six_volume += if flipped { -term } else { term };
    }
    Body {
        faces,
        min,
        max,
        volume: six_volume / 6.0,
    }
}

/// Flips a body whose volume came out negative, so every body faces outward.
fn orient_outward(body: &mut Body) {
    if body.volume < 0.0 {
        body.volume = -body.volume;
        for face in &mut body.faces {
            face.1 = !face.1;
        }
    }
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Möller–Trumbore ray/triangle intersection (hits in front of the origin only).
fn ray_hits(origin: [f64; 3], direction: [f64; 3], a: [f64; 3], b: [f64; 3], c: [f64; 3]) -> bool {
    let e1 = sub(b, a);
    let e2 = sub(c, a);
    let p = cross(direction, e2);
    let det = dot(e1, p);
    if det.abs() < 1e-15 {
        return false;
    }
    let inv = 1.0 / det;
    let t_vec = sub(origin, a);
    let u = dot(t_vec, p) * inv;
    if !(0.0..=1.0).contains(&u) {
        return false;
    }
    let q = cross(t_vec, e1);
    let v = dot(direction, q) * inv;
    if v < 0.0 || u + v > 1.0 {
        return false;
    }
    dot(e2, q) * inv > 0.0
}

/// The direction of the rays that decide what is inside what: not along an axis or a diagonal,
/// so that rays of axis-aligned meshes do not run exactly through their edges and vertices.
const RAY: [f64; 3] = [0.577_350_3, 0.577_350_2, 0.577_350_4];

/// For each body, whether it lies inside an odd number of the others (then it is a cavity).
///
/// Body *i* counts as inside body *j* when *j*'s bounding box holds *i*'s and a ray from a
/// vertex of *i* crosses *j* an odd number of times. Only the parity of the sum matters, so
/// one ray per body is cast and its crossings with every such *j* are added up. A ray can only
/// cross a triangle whose shadow, seen along the ray, covers the ray's origin; the origins are
/// put in a grid on the plane across the ray, and each triangle visits the cells its shadow
/// covers. That is linear in the triangles for real models (a triangle's shadow covers a cell
/// or two), where testing every body's ray against every other body is quadratic in the bodies.
/// Work beyond `budget` (cells visited plus ray tests) is refused as [`StlError::TooIntricate`].
fn nesting_parities(welded: &Welded, bodies: &[Body], budget: u64) -> Result<Vec<bool>, StlError> {
    let mut odd = vec![false; bodies.len()];
    if bodies.len() < 2 {
        return Ok(odd);
    }
    // An orthonormal basis (u, w) of the plane across the ray.
    let norm = dot(RAY, RAY).sqrt();
    let ray = RAY.map(|c| c / norm);
    let u = {
        let c = cross(ray, [1.0, 0.0, 0.0]);
        let n = dot(c, c).sqrt();
        c.map(|x| x / n)
    };
    let w = cross(ray, u);
    let shadow = |p: [f64; 3]| [dot(p, u), dot(p, w)];

    let origins: Vec<[f64; 3]> = bodies
        .iter()
        .map(|body| welded.vertices[welded.faces[body.faces[0].0 as usize][0] as usize])
        .collect();
    let grid = Grid::new(origins.iter().map(|&p| shadow(p)).collect());
    let mut work: u64 = 0;
    for (j, outer) in bodies.iter().enumerate() {
        for &(f, _) in &outer.faces {
            let [a, b, c] = welded.faces[f as usize].map(|v| welded.vertices[v as usize]);
            let corners = [shadow(a), shadow(b), shadow(c)];
            let low = [0, 1].map(|k| corners.iter().map(|p| p[k]).fold(f64::INFINITY, f64::min));
            let high = [0, 1].map(|k| {
                corners
                    .iter()
                    .map(|p| p[k])
                    .fold(f64::NEG_INFINITY, f64::max)
            });
            for cell in grid.cells_under(low, high) {
                work += 1;
                for &i in &grid.cells[cell] {
                    let i = i as usize;
                    let inner = &bodies[i];
                    let encloses = i != j
                        && (0..3).all(|axis| {
                            outer.min[axis] <= inner.min[axis] && inner.max[axis] <= outer.max[axis]
                        });
                    if encloses {
                        work += 1;
                        if ray_hits(origins[i], RAY, a, b, c) {
                            odd[i] = !odd[i];
                        }
                    }
                }
                if work > budget {
                    return Err(StlError::TooIntricate);
                }
            }
        }
    }
    Ok(odd)
}

/// Points on a plane bucketed into a square grid of about one cell per point.
struct Grid {
    low: [f64; 2],
    cell: [f64; 2],
    side: usize,
    /// Indices of the points in each cell, row by row.
    cells: Vec<Vec<u32>>,
}

impl Grid {
    fn new(points: Vec<[f64; 2]>) -> Self {
        let side = (points.len() as f64).sqrt().ceil().max(1.0) as usize;
        let low = [0, 1].map(|k| points.iter().map(|p| p[k]).fold(f64::INFINITY, f64::min));
        let high = [0, 1].map(|k| {
            points
                .iter()
                .map(|p| p[k])
                .fold(f64::NEG_INFINITY, f64::max)
        });
        // A cell never collapses to nothing, even when every point shares a coordinate.
        let cell = [0, 1].map(|k| ((high[k] - low[k]) / side as f64).max(f64::MIN_POSITIVE));
        let mut grid = Self {
            low,
            cell,
            side,
            cells: vec![Vec::new(); side * side],
        };
        for (i, p) in points.iter().enumerate() {
            let [x, y] = [0, 1].map(|k| grid.index(k, p[k]));
            grid.cells[y * side + x].push(i as u32);
        }
        grid
    }

    /// The cell column (k = 0) or row (k = 1) of coordinate `value`, clamped to the grid.
    fn index(&self, k: usize, value: f64) -> usize {
        let at = ((value - self.low[k]) / self.cell[k]).floor();
        if at.is_nan() || at < 0.0 {
            0
        } else {
            (at as usize).min(self.side - 1)
        }
    }

    /// The cells a rectangle overlaps (a little widened, so that a point on its edge counts);
    /// none when it lies outside the grid.
    fn cells_under(&self, low: [f64; 2], high: [f64; 2]) -> impl Iterator<Item = usize> + '_ {
        let slack = [0, 1].map(|k| (high[k] - low[k]).abs() * 1e-9 + 1e-12);
        let top = [0, 1].map(|k| self.low[k] + self.cell[k] * self.side as f64);
        let outside =
            (0..2).any(|k| high[k] + slack[k] < self.low[k] || low[k] - slack[k] > top[k]);
        let [x0, y0] = [0, 1].map(|k| self.index(k, low[k] - slack[k]));
        let [x1, y1] = [0, 1].map(|k| self.index(k, high[k] + slack[k]));
        let side = self.side;
        (y0..=y1)
            .flat_map(move |y| (x0..=x1).map(move |x| y * side + x))
            .filter(move |_| !outside)
    }
}

/// Measures a mesh; see the module documentation for the rules.
pub fn analyze(mesh: &Mesh) -> Result<MeshReport, StlError> {
    if mesh.triangles.is_empty() {
        return Err(StlError::Empty);
    }
    let welded = weld(mesh);
    if welded.faces.is_empty() {
        return Err(StlError::ZeroVolume);
    }
    let edges = edges(&welded.faces);
    let open_edges = edges.values().filter(|e| e.count == 1).count();
    let non_manifold_edges = edges.values().filter(|e| e.count > 2).count();
    if open_edges > 0 || non_manifold_edges > 0 {
        return Err(StlError::NotClosed {
            open_edges,
            non_manifold_edges,
        });
    }
    let mut bodies = bodies(&welded, &edges).ok_or(StlError::NotOrientable)?;
    if bodies.len() > MAX_BODIES {
        return Err(StlError::TooManyBodies {
            bodies: bodies.len(),
        });
    }
    bodies.iter_mut().for_each(orient_outward);

    // A body nested inside an odd number of others is a cavity.
    let mut cavities = 0;
    let mut volume = 0.0;
    let parities = nesting_parities(&welded, &bodies, NESTING_BUDGET)?;
    for (body, odd) in bodies.iter().zip(parities) {
        if odd {
            cavities += 1;
            volume -= body.volume;
        } else {
            volume += body.volume;
        }
    }
    if volume <= f64::EPSILON {
        return Err(StlError::ZeroVolume);
    }

    let mut min = [f64::INFINITY; 3];
    let mut max = [f64::NEG_INFINITY; 3];
    for body in &bodies {
        for axis in 0..3 {
            min[axis] = min[axis].min(body.min[axis]);
            max[axis] = max[axis].max(body.max[axis]);
        }
    }
    let surface_area_mm2 = welded
        .faces
        .iter()
        .map(|face| {
            let [a, b, c] = face.map(|v| welded.vertices[v as usize]);
            let n = cross(sub(b, a), sub(c, a));
            dot(n, n).sqrt() / 2.0
        })
        .sum();
    Ok(MeshReport {
        triangles: welded.faces.len(),
        bodies: bodies.len(),
        cavities,
        volume_mm3: volume,
        bounding_box_mm: [0, 1, 2].map(|axis| max[axis] - min[axis]),
        surface_area_mm2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/stl/");
        std::fs::read(format!("{path}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Reference volumes in mm³ from trimesh 5.2.0 (`trimesh.load(path).volume`, after
    /// `fix_normals()` per body for multibody.stl, whose facets are not consistently wound).
    const REFERENCE: [(&str, f64, usize); 7] = [
        ("20mm-xyz-cube.stl", 7_938.681_876_334_8, 1),
        ("unit_sphere.STL", 4.152_740_749_0, 1),
        ("torus.STL", 4.917_547_322_3, 1),
        ("cylinder.stl", 25.092_387_531_9, 1),
        ("featuretype.STL", 11.627_733_431_2, 1),
        ("busted.STL", 526.448_909_944_4, 1),
        ("multibody.stl", 0.001_471_428_601 + 0.005_951_791_946, 2),
    ];

    #[test]
    fn closed_fixtures_measure_what_trimesh_measures() {
        for (name, volume, bodies) in REFERENCE {
            let report = analyze_bytes(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let error = (report.volume_mm3 - volume).abs() / volume;
            assert!(error < 1e-6, "{name}: {} vs {volume}", report.volume_mm3);
            assert_eq!(report.bodies, bodies, "{name}");
            assert_eq!(report.cavities, 0, "{name}");
        }
    }

    #[test]
    fn the_cube_is_twenty_millimetres_on_each_side() {
        let report = analyze_bytes(&fixture("20mm-xyz-cube.stl")).unwrap();
        for size in report.bounding_box_mm {
            assert!((size - 20.0).abs() < 1e-3, "{size}");
        }
        assert!((report.surface_area_mm2 - 2_499.024_877).abs() < 1e-3);
    }

    #[test]
    fn a_binary_file_whose_header_starts_with_solid_is_read_as_binary() {
        let bytes = fixture("torus.STL");
        assert!(bytes.starts_with(b"solid"));
        let mesh = parse(&bytes).unwrap();
        assert_eq!(mesh.triangles.len(), 8700);
    }

    #[test]
    fn open_meshes_and_triangle_soup_are_not_closed() {
        for name in ["teapot.stl", "soup.stl"] {
            let err = analyze_bytes(&fixture(name)).unwrap_err();
            assert_eq!(err.code(), "stl_not_closed", "{name}: {err}");
            assert!(err.to_string().contains("watertight"), "{name}");
        }
    }

    #[test]
    fn a_file_without_triangles_is_empty() {
        let mesh = parse(&fixture("empty.stl")).unwrap();
        assert!(mesh.triangles.is_empty());
        assert_eq!(analyze(&mesh).unwrap_err(), StlError::Empty);
    }

    /// A cube of side `s` at `origin` as 12 triangles, outward-facing unless `inward`.
    fn cube(origin: [f32; 3], s: f32, inward: bool) -> Vec<Triangle> {
        let [x, y, z] = origin;
        let p = |i: u8| {
            [
                x + s * f32::from(i & 1),
                y + s * f32::from((i >> 1) & 1),
                z + s * f32::from((i >> 2) & 1),
            ]
        };
        let quads = [
            [0, 2, 3, 1],
            [4, 5, 7, 6],
            [0, 1, 5, 4],
            [2, 6, 7, 3],
            [0, 4, 6, 2],
            [1, 3, 7, 5],
        ];
        let mut triangles = Vec::new();
        for [a, b, c, d] in quads {
            for mut t in [[p(a), p(b), p(c)], [p(a), p(c), p(d)]] {
                if inward {
                    t.swap(1, 2);
                }
                triangles.push(t);
            }
        }
        triangles
    }

    fn binary(triangles: &[Triangle], header: &[u8]) -> Vec<u8> {
        let mut bytes = to_binary(triangles);
        bytes[..header.len()].copy_from_slice(header);
        bytes
    }

    fn volume(triangles: Vec<Triangle>) -> Result<MeshReport, StlError> {
        analyze(&Mesh {
            triangles,
            solids: 1,
        })
    }

    #[test]
    fn an_inside_out_cube_still_has_a_positive_volume() {
        let report = volume(cube([0.0; 3], 2.0, true)).unwrap();
        assert!((report.volume_mm3 - 8.0).abs() < 1e-9);
    }

    #[test]
    fn single_flipped_triangles_are_reoriented() {
        let mut triangles = cube([0.0; 3], 2.0, false);
        triangles[3].swap(0, 1);
        triangles[7].swap(1, 2);
        assert!((volume(triangles).unwrap().volume_mm3 - 8.0).abs() < 1e-9);
    }

    #[test]
    fn separate_bodies_add_up() {
        let mut triangles = cube([0.0; 3], 1.0, false);
        triangles.extend(cube([5.0, 0.0, 0.0], 2.0, true));
        let report = volume(triangles).unwrap();
        assert_eq!(report.bodies, 2);
        assert!((report.volume_mm3 - 9.0).abs() < 1e-9);
    }

    #[test]
    fn a_cavity_is_subtracted_whatever_its_winding() {
        for inward in [true, false] {
            let mut triangles = cube([0.0; 3], 4.0, false);
            triangles.extend(cube([1.0, 1.0, 1.0], 2.0, inward));
            let report = volume(triangles).unwrap();
            assert_eq!((report.bodies, report.cavities), (2, 1));
            assert!(
                (report.volume_mm3 - 56.0).abs() < 1e-9,
                "{}",
                report.volume_mm3
            );
        }
    }

    /// The nesting rule as first written, body against body: the reference the fast check is
    /// compared with.
    fn nesting_parities_pairwise(welded: &Welded, bodies: &[Body]) -> Vec<bool> {
        let contains = |body: &Body, point: [f64; 3]| {
            let crossings = body
                .faces
                .iter()
                .filter(|&&(f, _)| {
                    let [a, b, c] = welded.faces[f as usize].map(|v| welded.vertices[v as usize]);
                    ray_hits(point, RAY, a, b, c)
                })
                .count();
            crossings % 2 == 1
        };
        bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let probe = welded.vertices[welded.faces[body.faces[0].0 as usize][0] as usize];
                let depth = bodies
                    .iter()
                    .enumerate()
                    .filter(|&(j, outer)| {
                        j != i
                            && (0..3).all(|axis| {
                                outer.min[axis] <= body.min[axis]
                                    && body.max[axis] <= outer.max[axis]
                            })
                            && contains(outer, probe)
                    })
                    .count();
                depth % 2 == 1
            })
            .collect()
    }

    fn welded_bodies(triangles: Vec<Triangle>) -> (Welded, Vec<Body>) {
        let welded = weld(&Mesh {
            triangles,
            solids: 1,
        });
        let edges = edges(&welded.faces);
        let mut bodies = bodies(&welded, &edges).expect("orientable");
        bodies.iter_mut().for_each(orient_outward);
        (welded, bodies)
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn the_nesting_check_agrees_with_testing_every_body_against_every_other() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let mut with_cavities = 0;
        for case in 0..300 {
            // Cubes on a coarse grid: nested, overlapping, touching-free and apart, either winding.
            let mut triangles = Vec::new();
            for _ in 0..1 + random.below(12) {
                let origin = [0, 1, 2].map(|_| random.below(16) as f32);
                let side = 1.0 + random.below(10) as f32 + 0.5;
                triangles.extend(cube(origin, side, random.below(2) == 0));
            }
            let (welded, bodies) = welded_bodies(triangles);
            let fast = nesting_parities(&welded, &bodies, NESTING_BUDGET).unwrap();
            assert_eq!(
                fast,
                nesting_parities_pairwise(&welded, &bodies),
                "case {case}"
            );
            with_cavities += usize::from(fast.contains(&true));
        }
        // The cases must exercise nesting, not only bodies side by side.
        assert!(with_cavities >= 50, "{with_cavities} of 300 cases nest");
    }

    #[test]
    fn nested_shells_alternate_between_material_and_cavity() {
        let mut triangles = Vec::new();
        for k in 0..6u8 {
            let k = f32::from(k);
            triangles.extend(cube([k; 3], 20.0 - 2.0 * k, k as u8 % 2 == 1));
        }
        let report = volume(triangles).unwrap();
        assert_eq!((report.bodies, report.cavities), (6, 3));
        let expected: f64 = (0..6)
            .map(|k| {
                let side = 20.0 - 2.0 * f64::from(k);
                if k % 2 == 0 {
                    side.powi(3)
                } else {
                    -side.powi(3)
                }
            })
            .sum();
        assert!((report.volume_mm3 - expected).abs() < 1e-6);
    }

    #[test]
    fn a_model_of_more_bodies_than_the_limit_is_refused_with_the_count() {
        let mut triangles = Vec::new();
        for i in 0..=MAX_BODIES {
            triangles.extend(cube([3.0 * i as f32, 0.0, 0.0], 1.0, false));
        }
        let err = volume(triangles).unwrap_err();
        assert_eq!(
            err,
            StlError::TooManyBodies {
                bodies: MAX_BODIES + 1
            }
        );
        assert_eq!(err.code(), "stl_too_many_bodies");
    }

    #[test]
    fn a_binary_file_declaring_more_triangles_than_the_limit_is_refused_before_reading_them() {
        let declared = MAX_TRIANGLES + 1;
        let mut bytes = vec![0u8; BINARY_PREFIX + BINARY_TRIANGLE * declared as usize];
        bytes[HEADER..BINARY_PREFIX].copy_from_slice(&(declared as u32).to_le_bytes());
        let err = parse(&bytes).unwrap_err();
        assert_eq!(
            err,
            StlError::TooManyTriangles {
                triangles: declared
            }
        );
        assert!(err.to_string().contains("2000000"), "{err}");
    }

    #[test]
    fn nesting_beyond_the_work_budget_is_refused_as_too_intricate() {
        let mut triangles = Vec::new();
        for k in 0..40u8 {
            let k = f32::from(k);
            triangles.extend(cube([k * 0.5; 3], 100.0 - k, false));
        }
        let (welded, bodies) = welded_bodies(triangles);
        assert!(nesting_parities(&welded, &bodies, NESTING_BUDGET).is_ok());
        assert_eq!(
            nesting_parities(&welded, &bodies, 1_000).unwrap_err(),
            StlError::TooIntricate
        );
    }

    #[test]
    fn a_missing_triangle_is_a_hole() {
        let mut triangles = cube([0.0; 3], 1.0, false);
        triangles.pop();
        assert_eq!(
            volume(triangles).unwrap_err(),
            StlError::NotClosed {
                open_edges: 3,
                non_manifold_edges: 0
            }
        );
    }

    #[test]
    fn binary_and_ascii_round_trip_a_cube() {
        let triangles = cube([1.0, 2.0, 3.0], 10.0, false);
        let from_binary = analyze_bytes(&binary(&triangles, b"solid but binary")).unwrap();
        let mut ascii = String::from("solid cube\n");
        for t in &triangles {
            ascii.push_str("  facet normal 0 0 0\n    outer loop\n");
            for v in t {
                ascii.push_str(&format!("      vertex {:e} {} {}\n", v[0], v[1], v[2]));
            }
            ascii.push_str("    endloop\n  endfacet\n");
        }
        ascii.push_str("endsolid cube\n");
        let from_ascii = analyze_bytes(ascii.as_bytes()).unwrap();
        assert_eq!(from_binary, from_ascii);
        assert!((from_binary.volume_mm3 - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn a_truncated_binary_file_is_unreadable_and_says_so() {
        let mut bytes = binary(&cube([0.0; 3], 1.0, false), b"exported by a CAD tool");
        bytes.truncate(bytes.len() - 7);
        let err = parse(&bytes).unwrap_err();
        assert_eq!(err.code(), "stl_unreadable");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn a_huge_declared_count_in_a_short_file_is_refused_without_allocating() {
        let mut bytes = vec![0u8; 84];
        bytes[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&bytes).unwrap_err().code(), "stl_unreadable");
    }

    #[test]
    fn ascii_syntax_errors_name_the_line() {
        let text = "solid x\n facet normal 0 0 1\n  outer loop\n   vertex 0 0 zero\n";
        let err = parse(text.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
        let err = parse(b"solid x\n facet normal 0 0 1\n").unwrap_err();
        assert!(err.to_string().contains("endsolid"), "{err}");
    }

    #[test]
    fn non_finite_coordinates_are_unreadable() {
        let mut triangles = cube([0.0; 3], 1.0, false);
        triangles[0][1][2] = f32::NAN;
        let err = parse(&binary(&triangles, b"")).unwrap_err();
        assert_eq!(err.code(), "stl_unreadable");
        let err = parse(b"solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 inf\n").unwrap_err();
        assert_eq!(err.code(), "stl_unreadable");
    }

    #[test]
    fn a_flat_model_encloses_nothing() {
        let square = vec![
            [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]],
            [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
        ];
        assert_eq!(volume(square).unwrap_err().code(), "stl_zero_volume");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..500 {
            let len = (next() % 400) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 3 == 0 && bytes.len() > 5 {
                bytes[..5].copy_from_slice(b"solid");
            }
            if round % 5 == 0 && bytes.len() >= 84 {
                let count = ((bytes.len() - 84) / 50) as u32;
                bytes[80..84].copy_from_slice(&count.to_le_bytes());
            }
            let _ = analyze_bytes(&bytes);
        }
    }
}
