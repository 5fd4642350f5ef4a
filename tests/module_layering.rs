//! The layout reads top-down (docs/architecture.md, the numbered list between its `layers`
//! markers): a top-level module of `src/` may use (name with `crate::`) only modules of a lower
//! layer. Lower modules take the handles they need (a broadcaster, a store, a few fields), never the
//! whole `AppState`, and never the HTTP edge's types.
//!
//! Reads the sources as text: every `crate::<module>` path outside a comment is an edge.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("read src/");
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module → the top-level modules its files name with `crate::`.
fn module_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src/");
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a path");
        let module = first.trim_end_matches(".rs").to_string();
        if module == "main" || module == "lib" {
            continue; // the roots wire everything together
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let deps = graph.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one (depth-first search).
fn cycle_from(graph: &Graph, start: &str) -> Option<Vec<String>> {
    fn walk(graph: &Graph, start: &str, at: &str, path: &mut Vec<String>) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if path.contains(next) {
                continue;
            }
            path.push(next.clone());
            if walk(graph, start, next, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, start, &mut path).then_some(path)
}

/// The documented layers, top first: each numbered line between the `layers` markers of
/// docs/architecture.md, its backquoted module names.
fn documented_layers() -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md");
    let text = std::fs::read_to_string(&path).expect("read docs/architecture.md");
    let begin = text
        .find("<!-- layers: begin -->")
        .expect("docs/architecture.md marks its layer list");
    let end = text
        .find("<!-- layers: end -->")
        .expect("docs/architecture.md ends its layer list");
    text[begin..end]
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            let names = l.split(" — ").next().unwrap_or(l);
            names
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn every_import_goes_down_the_documented_layers() {
    let graph = module_graph();
    let layers = documented_layers();
    assert!(layers.len() > 3, "the documented layers: {layers:?}");
    let layer_of = |m: &str| layers.iter().position(|l| l.iter().any(|n| n == m));
    let unlisted: Vec<&String> = graph.keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unlisted.is_empty(),
        "top-level modules missing from the layer list of docs/architecture.md: {unlisted:?}"
    );
    let mut upward = Vec::new();
    for (module, deps) in &graph {
        let from = layer_of(module).unwrap_or(usize::MAX);
        for dep in deps {
            match layer_of(dep) {
                Some(to) if to > from => {}
                Some(to) => upward.push(format!(
                    "{module} (layer {}) uses {dep} (layer {})",
                    from + 1,
                    to + 1
                )),
                None => upward.push(format!("{module} uses {dep}, which is not listed")),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not go down the layers of docs/architecture.md:\n{}",
        upward.join("\n")
    );
}

#[test]
fn top_level_modules_form_no_import_circle() {
    let graph = module_graph();
    assert!(graph.contains_key("state") && graph.contains_key("http"));
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|c| c.join(" → "))
        .collect();
    assert!(
        cycles.is_empty(),
        "import circles between top-level modules (a lower module should take the handles it \
         needs, not the whole state or an HTTP type):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn only_the_edge_takes_the_whole_state() {
    // `replica` (the process above the edge) builds the state and hands it to the edge.
    let graph = module_graph();
    let offenders: Vec<&String> = graph
        .iter()
        .filter(|(m, deps)| !matches!(m.as_str(), "http" | "replica") && deps.contains("state"))
        .map(|(m, _)| m)
        .collect();
    assert!(
        offenders.is_empty(),
        "modules below the HTTP edge that use `crate::state`: {offenders:?}"
    );
    let http_users: Vec<&String> = graph
        .iter()
        .filter(|(m, deps)| m.as_str() != "replica" && deps.contains("http"))
        .map(|(m, _)| m)
        .collect();
    assert!(
        http_users.is_empty(),
        "modules that use the HTTP edge's types: {http_users:?}"
    );
}

#[test]
fn the_check_finds_a_circle() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    graph.entry("d".into()).or_default().insert("a".into());
    assert_eq!(
        cycle_from(&graph, "a"),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(cycle_from(&graph, "d"), None);
}
