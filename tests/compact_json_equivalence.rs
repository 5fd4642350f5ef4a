//! Contract §6: a SQL publish stores its params as compact JSON in jsonb's key order, exactly as
//! the recursive `compact_json` of migration 001 wrote them. Migration 006 replaced that function
//! with one pass over jsonb's own text (a regular expression); this checks, on a migrated schema,
//! that both give the same text for a few thousand generated values full of what could trip the
//! pattern (quotes, backslashes, `", "` and `": "` inside strings, control characters, non-ASCII,
//! empty and deeply nested containers, numbers in every notation), that the result is compact
//! (parses back to the same jsonb, no space outside strings), and that `publish()` stores it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::Deployment;
use serde_json::{json, Map, Value};

/// The recursive function as migration 001 created it, under another name (its recursive calls
/// renamed too), so both can be compared on one schema.
fn recursive_definition(schema: &str) -> String {
    let sql = include_str!("../sql/001_event_log.sql");
    let start = sql
        .find("CREATE FUNCTION {{schema}}.compact_json")
        .expect("migration 001 defines compact_json");
    let end = start
        + sql[start..]
            .find("\n$$;")
            .expect("the definition ends with $$;")
        + "\n$$;".len();
    sql[start..end]
        .replace(
            "{{schema}}.compact_json",
            "{{schema}}.compact_json_recursive",
        )
        .replace("{{schema}}", schema)
}

/// xorshift64*: the same values on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Pieces strings are made of: everything the pattern must not take for structure.
const PIECES: &[&str] = &[
    "a", "Z", " ", ", ", ": ", ",", ":", "\"", "\\", "\\\"", "\"\\", "\\\\", "{", "}", "[", "]",
    "\n", "\t", "\r", "\u{1}", "\u{1f}", "\u{7f}", "é", "ü", "日本", "😀", "\u{2028}", "/", "'",
    "null", "true", "1, 2", "\": \"", "\", \"",
];

fn string(rng: &mut Rng) -> String {
    (0..rng.below(6))
        .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
        .collect()
}

fn number(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!(rng.below(1000) as i64 - 500),
        1 => json!(i64::MIN + rng.below(1000) as i64),
        2 => json!((rng.below(100_000) as f64) / 1000.0),
        3 => serde_json::from_str("1.50").unwrap(),
        4 => serde_json::from_str("-0.000001e-7").unwrap(),
        _ => serde_json::from_str("12345678901234567890123456789").unwrap(),
    }
}

fn value(rng: &mut Rng, depth: u32) -> Value {
    let pick = if depth >= 5 {
        rng.below(5)
    } else {
        rng.below(7)
    };
    match pick {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => number(rng),
        3 | 4 => Value::String(string(rng)),
        5 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        _ => Value::Object(object(rng, depth + 1)),
    }
}

fn object(rng: &mut Rng, depth: u32) -> Map<String, Value> {
    (0..rng.below(5))
        .map(|_| (string(rng), value(rng, depth)))
        .collect()
}

/// Whether `json` has a space that is not inside a string.
fn space_outside_strings(json: &str) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (false, _, '"') => in_string = true,
            (false, _, ' ') => return true,
            _ => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_json_writes_what_the_recursive_version_wrote() {
    let pg = Deployment::fresh("cjson").await;
    // The replica migrates the schema (006 included).
    let _replica = pg.replica("cjson", &[]).await;
    let client = pg.client().await;
    let s = &pg.schema;
    client
        .batch_execute(&recursive_definition(s))
        .await
        .expect("create the recursive version");

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut values: Vec<Value> = (0..3000)
        .map(|i| {
            if i % 3 == 0 {
                value(&mut rng, 0)
            } else {
                Value::Object(object(&mut rng, 0))
            }
        })
        .collect();
    values.extend([
        json!({}),
        json!([]),
        json!({"": ""}),
        json!([[[[{}]]]]),
        json!(""),
    ]);
    let all = Value::Array(values.clone()).to_string();

    let rows = client
        .query(
            &format!(
                "SELECT v::text, {s}.compact_json(v), {s}.compact_json_recursive(v) \
                 FROM jsonb_array_elements($1::text::jsonb) AS t(v)"
            ),
            &[&all],
        )
        .await
        .expect("compare both versions");
    assert_eq!(rows.len(), values.len(), "every value compared");
    let mut differing = Vec::new();
    for row in &rows {
        let (input, new, old): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        if new != old {
            differing.push(format!("{input}\n  now:    {new}\n  before: {old}"));
        }
        // Compact and the same value: what jsonb prints for it, minus the separators' spaces.
        let reparsed: Value = serde_json::from_str(&new).expect("compact_json writes JSON");
        let printed: Value = serde_json::from_str(&input).expect("jsonb prints JSON");
        assert_eq!(reparsed, printed, "{new} is {input}");
        assert!(
            !space_outside_strings(&new),
            "no whitespace outside strings in {new}"
        );
    }
    assert!(
        differing.is_empty(),
        "{} of {} values compact differently, first: {}",
        differing.len(),
        rows.len(),
        differing.first().map(String::as_str).unwrap_or("")
    );

    // And publish() stores that text.
    let params = values
        .iter()
        .find(|v| v.as_object().is_some_and(|o| o.len() > 2))
        .expect("a generated object with keys")
        .clone();
    pg.sql_publish(&client, "notifications/test/compact", &params)
        .await;
    let stored = client
        .query_one(
            &format!(
                "SELECT params = {s}.compact_json_recursive($1::text::jsonb) \
                 FROM {s}.events ORDER BY seq DESC LIMIT 1"
            ),
            &[&params.to_string()],
        )
        .await
        .expect("read the stored params");
    assert!(
        stored.get::<_, bool>(0),
        "publish() stores what the recursive version wrote"
    );
}
