//! JSON request bodies parsed once into a [`Value`], refusing an object that names a key twice
//! (at any depth).
//!
//! `serde_json` keeps the last of duplicate keys; a gateway or an upstream in front of or behind
//! the service may keep the first, so the same bytes would mean two different things (a publish
//! validated for one tenant and stored for another). This builds the `Value` with its own visitor,
//! exactly as `serde_json` does, except that a second occurrence of a key is an error naming it.
//! The check is the map insertion the parse does anyway: no second pass, no extra allocation.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Why a body is not one JSON value the service accepts.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// An object names `key` twice (the bytes are JSON as far as they were read).
    #[error("duplicate key {key:?} at line {line} column {column}")]
    DuplicateKey {
        key: String,
        line: usize,
        column: usize,
    },
    /// Not JSON (or more than one value).
    #[error(transparent)]
    Syntax(#[from] serde_json::Error),
}

/// Parses `bytes` as one JSON value; an object with a repeated key is
/// [`JsonError::DuplicateKey`] naming the key.
pub fn parse_json(bytes: &[u8]) -> Result<Value, JsonError> {
    let duplicate = Cell::new(None);
    let seed = Strict {
        duplicate: &duplicate,
    };
    read_whole(bytes, seed, &duplicate)
}

/// Reads `bytes` as one value through `seed`, nothing after it; an error after `seed` left a key
/// in `duplicate` is [`JsonError::DuplicateKey`] naming it, at the error's position.
fn read_whole<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
    duplicate: &Cell<Option<String>>,
) -> Result<S::Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let read = seed
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value));
    read.map_err(|e| match duplicate.take() {
        Some(key) => JsonError::DuplicateKey {
            key,
            line: e.line(),
            column: e.column(),
        },
        None => JsonError::Syntax(e),
    })
}

/// A JSON object read as [`parse_json`] reads a value — a key named twice is an error naming it —
/// for decoders that deserialize into a type of their own (a JWT's claims).
pub struct StrictObject(pub Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrictObject, D::Error> {
        let duplicate = Cell::new(None);
        match (Strict {
            duplicate: &duplicate,
        })
        .deserialize(d)
        {
            Ok(Value::Object(map)) => Ok(StrictObject(map)),
            Ok(_) => Err(de::Error::custom("not a JSON object")),
            Err(e) => Err(match duplicate.take() {
                Some(key) => de::Error::custom(format!("it names {key:?} twice")),
                None => e,
            }),
        }
    }
}

/// Deserializes one value, duplicate keys refused (the first one found is left in `duplicate`).
#[derive(Clone, Copy)]
struct Strict<'a> {
    duplicate: &'a Cell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match obj.entry(key) {
                Entry::Occupied(seen) => {
                    self.duplicate.set(Some(seen.key().clone()));
                    return Err(de::Error::custom("duplicate key"));
                }
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(self)?);
                }
            }
        }
        Ok(Value::Object(obj))
    }
}

/// What the proxy needs of a body it forwards: the verdict of [`parse_json`] (one JSON value, no
/// key named twice at any depth; the same errors, at the same place) and the top-level object's
/// `method` when it is a string. No [`Value`] is built: each object's keys are compared as they
/// are read (borrowed from the input unless escaped) and dropped with it. The usual body (no
/// escape, short numbers, small objects) is read by [`simple_scan`](super::simple_scan) in one
/// pass; any other goes through `serde_json` as here.
pub fn scan_method(bytes: &[u8]) -> Result<Option<String>, JsonError> {
    if let Some(method) = super::simple_scan::scan(bytes) {
        return Ok(method);
    }
    let duplicate = Cell::new(None);
    let seed = Scan {
        duplicate: &duplicate,
        top: true,
        capture: false,
    };
    read_whole(bytes, seed, &duplicate)
}

/// Objects with more keys than this check for a repeated one in a hash set (SipHash: a body
/// cannot make the check quadratic); smaller ones compare in a list.
const SCAN_LIST_KEYS: usize = 16;

/// Reads one value for [`scan_method`]: `Some` only for the string a `capture` seed reads.
#[derive(Clone, Copy)]
struct Scan<'a> {
    duplicate: &'a Cell<Option<String>>,
    /// The body's own value: its `method` is captured.
    top: bool,
    /// This value is the top-level `method`: a string is returned.
    capture: bool,
}

impl Scan<'_> {
    fn nested(self) -> Self {
        Scan {
            top: false,
            capture: false,
            ..self
        }
    }
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<String>, E> {
        Ok(self.capture.then(|| v.to_owned()))
    }

    fn visit_unit<E>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_none<E>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<String>, A::Error> {
        while seq.next_element_seed(self.nested())?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        // The first keys on the stack (no allocation for the usual small object), the rest in a
        // hash set made only when an object has more.
        let mut listed: [Cow<'de, str>; SCAN_LIST_KEYS] =
            [const { Cow::Borrowed("") }; SCAN_LIST_KEYS];
        let mut n = 0;
        let mut hashed: Option<HashSet<Cow<'de, str>>> = None;
        let mut method = None;
        while let Some(key) = map.next_key_seed(Key)? {
            let repeated = match &hashed {
                None => listed[..n].contains(&key),
                Some(h) => h.contains(&key),
            };
            if repeated {
                self.duplicate.set(Some(key.into_owned()));
                return Err(de::Error::custom("duplicate key"));
            }
            if self.top && key == "method" {
                method = map.next_value_seed(Scan {
                    capture: true,
                    ..self.nested()
                })?;
            } else {
                map.next_value_seed(self.nested())?;
            }
            match &mut hashed {
                Some(h) => {
                    h.insert(key);
                }
                None if n < SCAN_LIST_KEYS => {
                    listed[n] = key;
                    n += 1;
                }
                None => {
                    let mut h: HashSet<Cow<'de, str>> =
                        listed.iter_mut().map(std::mem::take).collect();
                    h.insert(key);
                    hashed = Some(h);
                }
            }
        }
        Ok(method)
    }
}

/// An object key as decoded: borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strict_object_refuses_a_key_named_twice_naming_it() {
        let ok: StrictObject = serde_json::from_str(r#"{"sub":"a","n":{"x":1}}"#).expect("object");
        assert_eq!(ok.0.len(), 2);
        for (text, says) in [
            (r#"{"sub":"a","sub":"b"}"#, "\"sub\" twice"),
            (r#"{"n":{"x":1,"x":2}}"#, "\"x\" twice"),
            ("[1]", "not a JSON object"),
        ] {
            let Err(e) = serde_json::from_str::<StrictObject>(text) else {
                panic!("{text} accepted");
            };
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn parses_like_serde_json() {
        for text in [
            r#"{"z":1,"a":[true,null,-3,4.5,"s",{"k":{}}],"u":18446744073709551615}"#,
            r#"[]"#,
            r#""\u00e9\ud83d\ude00""#,
            "  7 ",
            r#"{"a":{"a":{"a":1}},"b":{"a":2}}"#,
        ] {
            let ours = parse_json(text.as_bytes()).expect(text);
            let theirs: Value = serde_json::from_str(text).expect(text);
            assert_eq!(ours, theirs, "{text}");
            assert_eq!(ours.to_string(), theirs.to_string(), "key order: {text}");
        }
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth_naming_them() {
        for (text, key) in [
            (r#"{"tenant":"a","tenant":"b"}"#, "tenant"),
            (r#"{"params":{"x":1,"y":2,"x":3}}"#, "x"),
            (r#"[{"ok":1},{"deep":[{"k":1,"k":1}]}]"#, "k"),
            (r#"{"a":1,"\u0061":2}"#, "a"),
        ] {
            match parse_json(text.as_bytes()) {
                Err(e @ JsonError::DuplicateKey { .. }) => {
                    let e = e.to_string();
                    let named = format!("duplicate key \"{key}\" at line 1 column ");
                    assert!(e.starts_with(&named), "{text}: {e}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for text in ["", "{", "1 2", r#"{"a":1,}"#, "[1,]", "nul", "1e999"] {
            let e = parse_json(text.as_bytes()).expect_err(text);
            assert!(matches!(e, JsonError::Syntax(_)), "{text:?}: {e}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_json(deep.as_bytes()).is_err(), "recursion limit kept");
    }

    /// `scan_method`'s verdict and `method`, as `parse_json` gives them.
    fn by_parse(text: &str) -> Result<Option<String>, String> {
        parse_json(text.as_bytes())
            .map(|v| v.get("method").and_then(Value::as_str).map(str::to_owned))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn scanning_agrees_with_parsing() {
        let many: String = (0..40).map(|i| format!(r#""k{i}":{i},"#)).collect();
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}"#,
            r#"{"method":7}"#,
            r#"{"params":{"method":"nested"}}"#,
            r#"[{"method":"batch"}]"#,
            r#"{"m\u0065thod":"escaped key"}"#,
            r#"{"method":"\u00e9\n"}"#,
            r#""method""#,
            r#"{"method":"a","method":"b"}"#,
            r#"{"a":{"b":[{"c":1,"c":2}]}}"#,
            r#"{"a":1,"\u0061":2}"#,
            "",
            "{",
            "1 2",
            "1e999",
            "[1,]",
            &format!("{{{many}\"k7\":0}}"),
            &format!("{{{many}\"k40\":0}}"),
        ] {
            let scanned = scan_method(text.as_bytes()).map_err(|e| e.to_string());
            assert_eq!(scanned, by_parse(text), "{text}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(
            scan_method(deep.as_bytes()).is_err(),
            "recursion limit kept"
        );
    }

    proptest::proptest! {
        /// Generated bodies (objects, arrays, every scalar, keys repeated or escaped, `method` of
        /// every type at every depth, truncated or not): the same verdict, error and `method`.
        #[test]
        fn scanning_agrees_with_parsing_on_generated_bodies(
            text in json_text(),
            cut in proptest::option::of(0usize..200),
        ) {
            let text = match cut {
                Some(n) if n < text.len() && text.is_char_boundary(n) => text[..n].to_owned(),
                _ => text,
            };
            let scanned = scan_method(text.as_bytes()).map_err(|e| e.to_string());
            proptest::prop_assert_eq!(scanned, by_parse(&text), "{}", text);
        }

        /// What the fast path (`simple_scan`) answers, `serde_json` answers alike: it accepts
        /// only bodies `serde_json` accepts, with the same `method` (the rest it leaves).
        #[test]
        fn the_fast_path_answers_as_parsing_does(text in json_text()) {
            if let Some(method) = crate::event::simple_scan::scan(text.as_bytes()) {
                proptest::prop_assert_eq!(Ok(method), by_parse(&text), "{}", text);
            }
        }
    }

    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let key = prop::sample::select(vec![
            r#""method""#,
            r#""m\u0065thod""#,
            r#""a""#,
            r#""\u0061""#,
            r#""b""#,
            r#""id""#,
        ]);
        let leaf = prop::sample::select(vec![
            "null",
            "true",
            "1",
            "-2.5e3",
            "18446744073709551615",
            r#""tools/call""#,
            r#""\u00e9""#,
            r#""""#,
            // The fast path's edges (`simple_scan`): what it reads and what it leaves.
            "0",
            "-0.5",
            "123456789012345678",
            "1234567890123456789",
            "1e3",
            "01",
            "1.",
            r#""é""#,
            "\"\u{7f}\"",
            r#""a\nb""#,
            " true ",
            "\n[ ]\t",
        ])
        .prop_map(str::to_owned);
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key.clone(), inner), 0..25).prop_map(|kv| {
                    let body: Vec<String> =
                        kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", body.join(","))
                }),
            ]
        })
    }
}
