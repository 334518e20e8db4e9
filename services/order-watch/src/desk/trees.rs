//! The technical journey: each trace of an order as a tree (parent and child spans nested), the
//! links between traces listed both ways so the hop from one trace to the next can be followed,
//! and the noise folded:
//!
//! * within a trace, a run of [`MIN_FOLD`] or more sibling database statements is one fold
//!   ("4 database statements"), and so is a run of sibling reads of the same name ("5 × GET
//!   /api/orders/{order_id}");
//! * among traces, a run of [`MIN_FOLD`] or more consecutive traces that only read the order
//!   (status checks: every span an observation, none failed) is one fold.
//!
//! A failed span is never folded away, and neither is a trace holding one. Each span carries
//! [`Mark`]s for what to highlight: errors, retries, queue waits, dead letters, transitions.
//!
//! Nodes refer to spans by their index in the journey's `spans`, so no span is sent twice. Trees
//! are at most [`MAX_DEPTH`] deep: below that, a span's descendants are listed flat under it (a
//! caller's spans could nest thousands deep, and neither the browser nor a recursive
//! serializer should follow them); spans whose parents form a cycle become roots.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use telemetry::attr;

use crate::store::queries::StoredSpan;

/// Fewest similar siblings (or status-check traces) folded together.
pub const MIN_FOLD: usize = 2;
/// Deepest nesting shown.
pub const MAX_DEPTH: usize = 48;
/// A wait in a queue from this long on is highlighted as slow.
pub const SLOW_QUEUE_WAIT_MS: i64 = 1_000;

/// What to highlight about a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    Error,
    DeadLetter,
    Retry,
    SlowQueue,
    QueueWait,
    Transition,
    Read,
    Database,
}

/// The marks of `span`.
pub fn marks(span: &StoredSpan) -> Vec<Mark> {
    let has = |key: &str| span.attributes.get(key).is_some_and(|v| !v.is_null());
    let mut marks = Vec::new();
    if span.status == "error" {
        marks.push(Mark::Error);
    }
    if has(attr::DLQ_ROUTE) {
        marks.push(Mark::DeadLetter);
    }
    if span
        .attributes
        .get(attr::RETRY_COUNT)
        .and_then(Value::as_i64)
        .is_some_and(|n| n > 0)
    {
        marks.push(Mark::Retry);
    }
    if let Some(wait) = span
        .attributes
        .get(attr::QUEUE_WAIT_MS)
        .and_then(Value::as_i64)
    {
        if wait >= SLOW_QUEUE_WAIT_MS {
            marks.push(Mark::SlowQueue);
        }
        marks.push(Mark::QueueWait);
    }
    if has(attr::ORDER_STATUS_TO) {
        marks.push(Mark::Transition);
    }
    if span.activity == "observation" {
        marks.push(Mark::Read);
    }
    if is_database(span) {
        marks.push(Mark::Database);
    }
    marks
}

fn is_database(span: &StoredSpan) -> bool {
    span.kind == "client"
        && ["db.system.name", "db.system"]
            .iter()
            .any(|key| span.attributes.get(*key).is_some())
}

/// What a fold holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldKind {
    /// Database statements.
    Database,
    /// Repeated reads of the same name.
    Reads,
}

/// A node of a trace's tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Node {
    Span {
        /// Index of the span in the journey's `spans`.
        span: usize,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        marks: Vec<Mark>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        children: Vec<Node>,
    },
    Fold {
        fold: FoldKind,
        /// "4 database statements: INSERT inbox, SELECT orders, …".
        label: String,
        children: Vec<Node>,
    },
}

/// A link from a span of one trace to a span of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceLink {
    pub from_trace_id: String,
    pub from_span_id: String,
    pub to_trace_id: String,
    pub to_span_id: String,
}

/// One trace as a tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceTree {
    pub trace_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub spans: usize,
    pub services: BTreeSet<String>,
    /// Its first root span's service and name: what started it.
    pub title: String,
    /// The statuses it moved the order to.
    pub statuses: Vec<String>,
    /// Every mark of its spans.
    pub marks: BTreeSet<Mark>,
    /// Every span only reads the order.
    pub reads_only: bool,
    pub roots: Vec<Node>,
    /// Where it continues from: its spans' links to other traces.
    pub links: Vec<TraceLink>,
    /// Where it continues: other traces' links to it.
    pub linked_from: Vec<TraceLink>,
    /// The same trace in the trace store, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The journey's traces in order, consecutive status checks folded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    Trace(Box<TraceTree>),
    Reads {
        /// "5 status checks by shop-api".
        label: String,
        traces: Vec<TraceTree>,
    },
}

/// The trees of `spans` (a journey's, in time order), in the order their traces began;
/// `trace_url` gives a trace's address in the trace store.
pub fn build(spans: &[StoredSpan], trace_url: impl Fn(&str) -> Option<String>) -> Vec<Entry> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_trace: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, span) in spans.iter().enumerate() {
        by_trace
            .entry(span.trace_id.as_str())
            .or_insert_with(|| {
                order.push(span.trace_id.as_str());
                Vec::new()
            })
            .push(index);
    }
    let mut trees: Vec<TraceTree> = order
        .iter()
        .map(|trace| tree(spans, trace, &by_trace[trace], &trace_url))
        .collect();
    trees.sort_by_key(|t| t.start);
    let links: Vec<TraceLink> = trees.iter().flat_map(|t| t.links.clone()).collect();
    for tree in &mut trees {
        tree.linked_from = links
            .iter()
            .filter(|l| l.to_trace_id == tree.trace_id)
            .cloned()
            .collect();
    }
    fold_reads(trees)
}

fn tree(
    spans: &[StoredSpan],
    trace_id: &str,
    members: &[usize],
    trace_url: &impl Fn(&str) -> Option<String>,
) -> TraceTree {
    let by_id: HashMap<&str, usize> = members
        .iter()
        .map(|&i| (spans[i].span_id.as_str(), i))
        .collect();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for &i in members {
        match spans[i]
            .parent_span_id
            .as_deref()
            .and_then(|p| by_id.get(p))
        {
            Some(&parent) if parent != i => children.entry(parent).or_default().push(i),
            _ => roots.push(i),
        }
    }
    let mut visited = vec![false; spans.len()];
    let mut nodes: Vec<Node> = roots
        .iter()
        .filter_map(|&r| node(spans, r, &children, &mut visited, 0))
        .collect();
    // Spans whose parents form a cycle are reached from no root.
    for &i in members {
        if !visited[i]
            && let Some(n) = node(spans, i, &children, &mut visited, 0)
        {
            nodes.push(n);
        }
    }
    let nodes = fold(spans, nodes);
    let title = roots
        .first()
        .or(members.first())
        .map(|&i| format!("{} · {}", spans[i].service, spans[i].name))
        .unwrap_or_default();
    let mut statuses = Vec::new();
    let mut all_marks = BTreeSet::new();
    let mut links = Vec::new();
    for &i in members {
        let span = &spans[i];
        all_marks.extend(marks(span));
        if span.status != "error"
            && let Some(to) = span
                .attributes
                .get(attr::ORDER_STATUS_TO)
                .and_then(Value::as_str)
            && !statuses.iter().any(|s| s == to)
        {
            statuses.push(to.to_owned());
        }
        for link in span.links.as_array().into_iter().flatten() {
            let to_trace = link["trace_id"].as_str().unwrap_or_default();
            if !to_trace.is_empty() && to_trace != trace_id {
                links.push(TraceLink {
                    from_trace_id: trace_id.to_owned(),
                    from_span_id: span.span_id.clone(),
                    to_trace_id: to_trace.to_owned(),
                    to_span_id: link["span_id"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    TraceTree {
        trace_id: trace_id.to_owned(),
        start: members
            .iter()
            .map(|&i| spans[i].start)
            .min()
            .unwrap_or_default(),
        end: members
            .iter()
            .map(|&i| spans[i].end)
            .max()
            .unwrap_or_default(),
        spans: members.len(),
        services: members.iter().map(|&i| spans[i].service.clone()).collect(),
        title,
        statuses,
        reads_only: members
            .iter()
            .all(|&i| spans[i].activity == "observation" && spans[i].status != "error"),
        marks: all_marks,
        roots: nodes,
        links,
        linked_from: vec![],
        url: trace_url(trace_id),
    }
}

/// The node of span `index` with its descendants, nested up to [`MAX_DEPTH`] and flat below.
fn node(
    spans: &[StoredSpan],
    index: usize,
    children: &HashMap<usize, Vec<usize>>,
    visited: &mut [bool],
    depth: usize,
) -> Option<Node> {
    if visited[index] {
        return None;
    }
    visited[index] = true;
    let kids: Vec<Node> = if depth + 1 >= MAX_DEPTH {
        // Every descendant, flat, in time order.
        let mut flat = Vec::new();
        let mut stack: Vec<usize> = children.get(&index).cloned().unwrap_or_default();
        while let Some(next) = stack.pop() {
            if visited[next] {
                continue;
            }
            visited[next] = true;
            flat.push(next);
            stack.extend(children.get(&next).into_iter().flatten().copied());
        }
        flat.sort_unstable();
        flat.into_iter()
            .map(|i| Node::Span {
                span: i,
                marks: marks(&spans[i]),
                children: vec![],
            })
            .collect()
    } else {
        children
            .get(&index)
            .into_iter()
            .flatten()
            .filter_map(|&child| node(spans, child, children, visited, depth + 1))
            .collect()
    };
    Some(Node::Span {
        span: index,
        marks: marks(&spans[index]),
        children: fold(spans, kids),
    })
}

/// What a sibling can be folded with: the same kind of fold, and for reads the same name.
fn foldable(spans: &[StoredSpan], node: &Node) -> Option<(FoldKind, String)> {
    let Node::Span { span, marks, .. } = node else {
        return None;
    };
    if marks.contains(&Mark::Error) {
        return None;
    }
    if marks.contains(&Mark::Database) {
        return Some((FoldKind::Database, String::new()));
    }
    if marks.contains(&Mark::Read) && !marks.contains(&Mark::Transition) {
        let span = &spans[*span];
        return Some((FoldKind::Reads, format!("{} · {}", span.service, span.name)));
    }
    None
}

/// `nodes` with each run of [`MIN_FOLD`] or more foldable siblings folded.
fn fold(spans: &[StoredSpan], nodes: Vec<Node>) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::with_capacity(nodes.len());
    let mut run: Vec<Node> = Vec::new();
    let mut run_key: Option<(FoldKind, String)> = None;
    let flush =
        |out: &mut Vec<Node>, run: &mut Vec<Node>, key: &Option<(FoldKind, String)>| match key {
            Some((kind, name)) if run.len() >= MIN_FOLD => {
                let label = match kind {
                    FoldKind::Database => {
                        let mut names: Vec<&str> = Vec::new();
                        for n in run.iter() {
                            if let Node::Span { span, .. } = n
                                && !names.contains(&spans[*span].name.as_str())
                            {
                                names.push(&spans[*span].name);
                            }
                        }
                        let shown = names.len().min(3);
                        let more = if names.len() > shown { ", …" } else { "" };
                        format!(
                            "{} database statements: {}{more}",
                            run.len(),
                            names[..shown].join(", ")
                        )
                    }
                    FoldKind::Reads => format!("{} × {name}", run.len()),
                };
                out.push(Node::Fold {
                    fold: *kind,
                    label,
                    children: std::mem::take(run),
                });
            }
            _ => out.append(run),
        };
    for node in nodes {
        let key = foldable(spans, &node);
        if key.is_none() || key != run_key {
            flush(&mut out, &mut run, &run_key);
            run_key = key;
        }
        run.push(node);
    }
    flush(&mut out, &mut run, &run_key);
    out
}

/// Runs of [`MIN_FOLD`] or more consecutive read-only traces, folded.
fn fold_reads(trees: Vec<TraceTree>) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut run: Vec<TraceTree> = Vec::new();
    let flush = |out: &mut Vec<Entry>, run: &mut Vec<TraceTree>| {
        if run.len() >= MIN_FOLD {
            let services: BTreeSet<&str> = run
                .iter()
                .flat_map(|t| t.services.iter().map(String::as_str))
                .collect();
            let label = format!(
                "{} status checks by {}",
                run.len(),
                services.into_iter().collect::<Vec<_>>().join(", ")
            );
            out.push(Entry::Reads {
                label,
                traces: std::mem::take(run),
            });
        } else {
            out.extend(run.drain(..).map(|t| Entry::Trace(Box::new(t))));
        }
    };
    for tree in trees {
        if tree.reads_only {
            run.push(tree);
        } else {
            flush(&mut out, &mut run);
            out.push(Entry::Trace(Box::new(tree)));
        }
    }
    flush(&mut out, &mut run);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap() + chrono::Duration::milliseconds(ms)
    }

    struct Spec<'a> {
        trace: &'a str,
        id: &'a str,
        parent: Option<&'a str>,
        name: &'a str,
        kind: &'static str,
        attributes: Value,
    }

    fn spans(specs: &[Spec<'_>]) -> Vec<StoredSpan> {
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| StoredSpan {
                trace_id: s.trace.into(),
                span_id: s.id.into(),
                parent_span_id: s.parent.map(str::to_owned),
                service: "crm-api".into(),
                name: s.name.into(),
                kind: s.kind,
                start: at(i as i64 * 10),
                end: at(i as i64 * 10 + 5),
                duration_ms: 5.0,
                status: "unset",
                status_message: String::new(),
                activity: if s.attributes.get("order.activity") == Some(&json!("observation")) {
                    "observation"
                } else {
                    "progress"
                },
                attributes: s.attributes.clone(),
                links: s.attributes.get("link").map_or(json!([]), |l| json!([l])),
            })
            .collect()
    }

    fn db<'a>(trace: &'a str, id: &'a str, parent: &'a str, name: &'a str) -> Spec<'a> {
        Spec {
            trace,
            id,
            parent: Some(parent),
            name,
            kind: "client",
            attributes: json!({"db.system.name": "postgresql"}),
        }
    }

    fn read<'a>(trace: &'a str, id: &'a str) -> Spec<'a> {
        Spec {
            trace,
            id,
            parent: None,
            name: "GET /api/orders/{order_id}",
            kind: "server",
            attributes: json!({"order.activity": "observation"}),
        }
    }

    /// The tree as text: one line per node, indented by depth.
    fn outline(spans: &[StoredSpan], nodes: &[Node], depth: usize, out: &mut Vec<String>) {
        for node in nodes {
            let pad = "  ".repeat(depth);
            match node {
                Node::Span { span, children, .. } => {
                    out.push(format!("{pad}{}", spans[*span].name));
                    outline(spans, children, depth + 1, out);
                }
                Node::Fold {
                    label, children, ..
                } => {
                    out.push(format!("{pad}[{label}]"));
                    outline(spans, children, depth + 1, out);
                }
            }
        }
    }

    fn trace_of(entry: &Entry) -> &TraceTree {
        match entry {
            Entry::Trace(t) => t,
            Entry::Reads { .. } => panic!("a fold of reads"),
        }
    }

    #[test]
    fn a_trace_nests_children_under_parents_and_folds_database_statements() {
        let spans = spans(&[
            Spec {
                trace: "t1",
                id: "p",
                parent: Some("from-another-process"),
                name: "process hallmark.orders",
                kind: "consumer",
                attributes: json!({"hallmark.queue.wait_ms": 1500, "hallmark.retry.count": 1}),
            },
            db("t1", "d1", "p", "INSERT inbox"),
            db("t1", "d2", "p", "SELECT orders"),
            db("t1", "d3", "p", "UPDATE orders"),
            Spec {
                trace: "t1",
                id: "s",
                parent: Some("p"),
                name: "order registered",
                kind: "internal",
                attributes: json!({"order.status.to": "registered"}),
            },
            db("t1", "d4", "s", "INSERT outbox"),
        ]);
        let entries = build(&spans, |t| Some(format!("http://jaeger:16686/trace/{t}")));
        let tree = trace_of(&entries[0]);
        let mut lines = Vec::new();
        outline(&spans, &tree.roots, 0, &mut lines);
        assert_eq!(
            lines,
            [
                "process hallmark.orders",
                "  [3 database statements: INSERT inbox, SELECT orders, UPDATE orders]",
                "    INSERT inbox",
                "    SELECT orders",
                "    UPDATE orders",
                "  order registered",
                "    INSERT outbox",
            ]
        );
        let Node::Span { marks, .. } = &tree.roots[0] else {
            panic!()
        };
        assert_eq!(marks, &[Mark::Retry, Mark::SlowQueue, Mark::QueueWait]);
        assert_eq!(tree.statuses, ["registered"]);
        assert_eq!(tree.title, "crm-api · process hallmark.orders");
        assert_eq!(tree.url.as_deref(), Some("http://jaeger:16686/trace/t1"));
    }

    #[test]
    fn a_failed_statement_breaks_its_fold_and_stays_in_sight() {
        let mut spans = spans(&[
            Spec {
                trace: "t1",
                id: "p",
                parent: None,
                name: "POST /api/orders",
                kind: "server",
                attributes: json!({}),
            },
            db("t1", "d1", "p", "INSERT customers"),
            db("t1", "d2", "p", "INSERT orders"),
            db("t1", "d3", "p", "INSERT outbox"),
        ]);
        spans[2].status = "error";
        let entries = build(&spans, |_| None);
        let mut lines = Vec::new();
        outline(&spans, &trace_of(&entries[0]).roots, 0, &mut lines);
        assert_eq!(
            lines,
            [
                "POST /api/orders",
                "  INSERT customers",
                "  INSERT orders",
                "  INSERT outbox"
            ]
        );
        assert!(trace_of(&entries[0]).marks.contains(&Mark::Error));
    }

    #[test]
    fn consecutive_status_check_traces_fold_and_the_links_between_traces_are_listed_both_ways() {
        let spans = spans(&[
            Spec {
                trace: "t1",
                id: "a",
                parent: None,
                name: "POST /api/orders",
                kind: "server",
                attributes: json!({"order.status.to": "created"}),
            },
            read("r1", "x1"),
            read("r2", "x2"),
            read("r3", "x3"),
            Spec {
                trace: "t2",
                id: "b",
                parent: None,
                name: "POST /api/orders/{order_id}/confirm",
                kind: "server",
                attributes: json!({"link": {"trace_id": "t1", "span_id": "a"}}),
            },
            read("r4", "x4"),
        ]);
        let entries = build(&spans, |_| None);
        assert_eq!(entries.len(), 4, "{entries:#?}");
        let Entry::Reads { label, traces } = &entries[1] else {
            panic!("{:?}", entries[1])
        };
        assert_eq!(label, "3 status checks by crm-api");
        assert_eq!(traces.len(), 3);
        let confirmation = trace_of(&entries[2]);
        let hop = TraceLink {
            from_trace_id: "t2".into(),
            from_span_id: "b".into(),
            to_trace_id: "t1".into(),
            to_span_id: "a".into(),
        };
        assert_eq!(confirmation.links, std::slice::from_ref(&hop));
        assert_eq!(trace_of(&entries[0]).linked_from, [hop]);
        assert!(
            trace_of(&entries[3]).reads_only,
            "a single status check is no fold"
        );
    }

    #[test]
    fn repeated_reads_within_a_trace_fold_by_name() {
        let spans = spans(&[
            Spec {
                trace: "t1",
                id: "cli",
                parent: None,
                name: "hallmark demo",
                kind: "internal",
                attributes: json!({}),
            },
            Spec {
                parent: Some("cli"),
                ..read("t1", "g1")
            },
            Spec {
                parent: Some("cli"),
                ..read("t1", "g2")
            },
            Spec {
                parent: Some("cli"),
                ..read("t1", "g3")
            },
        ]);
        let entries = build(&spans, |_| None);
        let mut lines = Vec::new();
        outline(&spans, &trace_of(&entries[0]).roots, 0, &mut lines);
        assert_eq!(lines[1], "  [3 × crm-api · GET /api/orders/{order_id}]");
    }

    #[test]
    fn endless_nesting_stops_at_the_depth_limit_and_cycles_still_show_every_span() {
        let ids: Vec<String> = (0..200).map(|i| format!("s{i}")).collect();
        let mut specs: Vec<Spec<'_>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Spec {
                trace: "deep",
                id,
                parent: (i > 0).then(|| ids[i - 1].as_str()),
                name: "step",
                kind: "internal",
                attributes: json!({}),
            })
            .collect();
        specs.push(Spec {
            trace: "loop",
            id: "a",
            parent: Some("b"),
            name: "a",
            kind: "internal",
            attributes: json!({}),
        });
        specs.push(Spec {
            trace: "loop",
            id: "b",
            parent: Some("a"),
            name: "b",
            kind: "internal",
            attributes: json!({}),
        });
        let spans = spans(&specs);
        let entries = build(&spans, |_| None);
        fn depth_and_count(nodes: &[Node]) -> (usize, usize) {
            nodes.iter().fold((0, 0), |(depth, count), node| {
                let Node::Span { children, .. } = node else {
                    panic!("no folds here")
                };
                let (d, c) = depth_and_count(children);
                (depth.max(d + 1), count + c + 1)
            })
        }
        assert_eq!(
            depth_and_count(&trace_of(&entries[0]).roots),
            (MAX_DEPTH + 1, 200)
        );
        assert_eq!(depth_and_count(&trace_of(&entries[1]).roots).1, 2);
    }
}
