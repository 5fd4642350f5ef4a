//! The metric names operators are given are the ones a replica exposes: every metric the chart's
//! alerts (`helm/mcp-fanout/templates/prometheusrule.yaml`) and the API's metrics table
//! (`docs/api.md`) name is in a replica's `/metrics`, and every metric it exposes is documented.
//! An alert on a name the binary does not expose never fires; nothing else would catch it.
//!
//! The replica runs in Postgres mode and proxy mode, so every metric family is registered.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::collections::BTreeSet;

use mcp_fanout_testkit::Deployment;

/// Every `mcp_fanout_…` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("mcp_fanout_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The series names a `/metrics` text can hold, from its `# TYPE` lines: a counter's with
/// `_total`, a histogram's `_bucket`, `_sum` and `_count`, and each family's own name.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if (fields.next(), fields.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (fields.next(), fields.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {}
        }
    }
    names
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_docs_name_the_metrics_a_replica_exposes() {
    let pg = Deployment::fresh("metricnames").await.with_admin();
    // Proxy mode registers the proxy's metrics; the upstream is never called.
    let r = pg
        .replica(
            "metric-names",
            &[("FANOUT_UPSTREAM", "http://127.0.0.1:9/mcp")],
        )
        .await;
    let text = r.metrics_text().await.expect("/metrics");
    let exposed = exposed(&text);
    assert!(
        exposed.contains("mcp_fanout_events_published_total"),
        "read the # TYPE lines: {exposed:?}"
    );

    let alerts = names_in(&repo_file("helm/mcp-fanout/templates/prometheusrule.yaml"));
    assert!(alerts.len() >= 5, "alerts name metrics: {alerts:?}");
    let unknown: Vec<_> = alerts.difference(&exposed).collect();
    assert!(
        unknown.is_empty(),
        "the chart's alerts name metrics no replica exposes: {unknown:?}"
    );

    let documented = names_in(&repo_file("docs/api.md"));
    let undocumented: Vec<_> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|family| {
            // Documented as the family or as its series (a counter's `_total`).
            !documented.contains(*family) && !documented.contains(&format!("{family}_total"))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "exposed but not in docs/api.md: {undocumented:?}"
    );
    let stale: Vec<_> = documented
        .iter()
        .filter(|n| !exposed.contains(*n))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/api.md names metrics no replica exposes: {stale:?}"
    );
}
