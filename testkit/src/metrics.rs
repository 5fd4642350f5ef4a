//! Reading values out of Prometheus text exposition (what `/metrics` serves).

use crate::error::{Error, Result};

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric (series) name as exposed, e.g. `mcp_fanout_subscribers_dropped_total`.
    pub name: String,
    /// Labels in order of appearance.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// Parses a selector such as `mcp_fanout_subscribers_dropped_total{reason="write_stall"}` into a name
/// and the labels that must match.
pub fn parse_selector(selector: &str) -> Result<(String, Vec<(String, String)>)> {
    let selector = selector.trim();
    match selector.find('{') {
        None => Ok((selector.to_string(), Vec::new())),
        Some(open) => {
            let inner = selector[open + 1..].strip_suffix('}').ok_or_else(|| {
                Error::Protocol(format!(
                    "bad metric selector {selector:?}: no closing brace"
                ))
            })?;
            let labels = parse_labels(inner)
                .ok_or_else(|| Error::Protocol(format!("bad metric selector {selector:?}")))?;
            Ok((selector[..open].to_string(), labels))
        }
    }
}

fn parse_labels(inner: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        labels.push((name, value));
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(labels)
}

/// Every sample in an exposition text (comments and malformed lines are skipped).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(open) if open < line.find(' ').unwrap_or(usize::MAX) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (&line[..=close], &line[close + 1..])
            }
            _ => match line.split_once(' ') {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        let Ok((name, labels)) = parse_selector(series) else {
            continue;
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of every sample whose name equals the selector's and whose labels include the selector's
/// labels; `None` when no sample matches.
pub fn value(text: &str, selector: &str) -> Result<Option<f64>> {
    let (name, want) = parse_selector(selector)?;
    let mut sum = None;
    for s in parse_samples(text) {
        if s.name != name {
            continue;
        }
        if want.iter().all(|w| s.labels.contains(w)) {
            *sum.get_or_insert(0.0) += s.value;
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP mcp_fanout_subscribers Current subscribers.\n\
# TYPE mcp_fanout_subscribers gauge\n\
mcp_fanout_subscribers 3\n\
mcp_fanout_subscribers_dropped_total{reason=\"write_stall\"} 1\n\
mcp_fanout_subscribers_dropped_total{reason=\"lagging\",kind=\"get\"} 2\n\
mcp_fanout_events_published_total 17 1700000000\n\
# EOF\n";

    #[test]
    fn reads_values_by_selector() {
        assert_eq!(
            value(TEXT, "mcp_fanout_subscribers").expect("ok"),
            Some(3.0)
        );
        assert_eq!(
            value(
                TEXT,
                "mcp_fanout_subscribers_dropped_total{reason=\"write_stall\"}"
            )
            .expect("ok"),
            Some(1.0)
        );
        assert_eq!(
            value(
                TEXT,
                "mcp_fanout_subscribers_dropped_total{reason=\"lagging\"}"
            )
            .expect("ok"),
            Some(2.0)
        );
        assert_eq!(
            value(TEXT, "mcp_fanout_subscribers_dropped_total").expect("ok"),
            Some(3.0)
        );
        assert_eq!(
            value(TEXT, "mcp_fanout_events_published_total").expect("ok"),
            Some(17.0)
        );
        assert_eq!(
            value(
                TEXT,
                "mcp_fanout_subscribers_dropped_total{reason=\"shutdown\"}"
            )
            .expect("ok"),
            None
        );
    }
}
