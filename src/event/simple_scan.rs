//! [`scan_method`](super::json::scan_method)'s fast path: the usual JSON-RPC body recognised in
//! one pass over its bytes, without serde's machinery (which costs ~45 instructions a byte for a
//! `tools/call` body, more than the rest of the service's own work on a proxied request).
//!
//! It recognises a strict subset of JSON and answers only for that subset. What it accepts,
//! `serde_json` accepts too, with the same top-level `method`:
//! - strings of printable characters with no escape (no `\`, no control character; any UTF-8, as
//!   the whole body is checked to be UTF-8 first);
//! - integers and decimals of at most 18 digits, without an exponent (none can overflow);
//! - `true`, `false`, `null`; objects and arrays nested at most [`MAX_DEPTH`] deep;
//! - objects of at most [`MAX_KEYS`] keys, none named twice;
//! - JSON's four whitespace characters around them, and nothing after the value.
//!
//! Anything else — an escape, an exponent, a long number, a repeated key, a syntax error — is
//! `None`: the caller reads the body the slow way, which gives the verdict and the error it always
//! gave. So the fast path can only be wrong by accepting what `serde_json` refuses, and the tests
//! compare the two on generated bodies.

/// Deepest nesting the fast path follows (`serde_json` refuses past 128).
pub const MAX_DEPTH: usize = 64;

/// Most keys of one object the fast path compares (a list, compared in full for each key).
pub const MAX_KEYS: usize = 16;

/// Most digits of a number the fast path accepts (no `u64`, `i64` or `f64` overflow).
const MAX_DIGITS: usize = 18;

/// The body's verdict and top-level `method` (when a string), or `None` when the body is not in
/// the subset (see the module's doc).
pub fn scan(bytes: &[u8]) -> Option<Option<String>> {
    std::str::from_utf8(bytes).ok()?;
    let mut r = Reader { bytes, at: 0 };
    r.skip_space();
    let method = r.value(0, true)?;
    r.skip_space();
    (r.at == bytes.len()).then_some(method.map(|m| String::from_utf8_lossy(m).into_owned()))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// One value at `depth`; for the body's own object (`top`), its `method` when a string.
    /// `Some(None)`: a value with no method to report.
    fn value(&mut self, depth: usize, top: bool) -> Option<Option<&'a [u8]>> {
        match self.peek()? {
            b'{' => self.object(depth, top),
            b'[' => self.array(depth).map(|()| None),
            b'"' => self.string().map(|_| None),
            b't' => self.literal(b"true").map(|()| None),
            b'f' => self.literal(b"false").map(|()| None),
            b'n' => self.literal(b"null").map(|()| None),
            b'-' | b'0'..=b'9' => self.number().map(|()| None),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize, top: bool) -> Option<Option<&'a [u8]>> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        let mut keys: [&[u8]; MAX_KEYS] = [&[]; MAX_KEYS];
        let mut n = 0;
        let mut method = None;
        self.skip_space();
        if self.eat(b'}').is_some() {
            return Some(None);
        }
        loop {
            self.skip_space();
            let key = self.string()?;
            if n == MAX_KEYS || keys[..n].contains(&key) {
                return None;
            }
            keys[n] = key;
            n += 1;
            self.skip_space();
            self.eat(b':')?;
            self.skip_space();
            if top && key == b"method" && self.peek() == Some(b'"') {
                method = Some(self.string()?);
            } else {
                self.value(depth + 1, false)?;
            }
            self.skip_space();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(method);
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        self.skip_space();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.skip_space();
            self.value(depth + 1, false)?;
            self.skip_space();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string without escapes or control characters: its contents.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.at;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(&self.bytes[start..self.at - 1]);
                }
                b'\\' | 0x00..=0x1f => return None,
                _ => self.at += 1,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, at most [`MAX_DIGITS`] digits; an exponent is not taken
    /// (the caller then finds a byte it does not expect).
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        let mut digits = 0;
        match self.peek()? {
            b'0' => {
                self.at += 1;
                digits += 1;
            }
            b'1'..=b'9' => digits += self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            let fraction = self.digits();
            if fraction == 0 {
                return None;
            }
            digits += fraction;
        }
        (digits <= MAX_DIGITS).then_some(())
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_bodies_are_read_and_their_method_found() {
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":-2.5,"c":[true,false,null,{}],"d":"é"}}}"#;
        assert_eq!(scan(call.as_bytes()), Some(Some("tools/call".to_owned())));
        assert_eq!(scan(b" {\"method\" : 7}\n"), Some(None), "not a string");
        assert_eq!(scan(br#"{"params":{"method":"nested"}}"#), Some(None));
        assert_eq!(scan(br#"[{"method":"batch"}]"#), Some(None));
        assert_eq!(scan(b"[]"), Some(None));
        assert_eq!(scan(b"0"), Some(None));
    }

    #[test]
    fn anything_outside_the_subset_is_left_to_the_slow_path() {
        for body in [
            &b""[..],
            b"{",
            b"1 2",
            b"1e3",
            b"01",
            b"1.",
            b"-",
            b"1234567890123456789",
            br#"{"m\u0065thod":"x"}"#,
            br#"{"method":"a\nb"}"#,
            b"{\"a\":\"tab\there\"}",
            br#"{"a":1,"a":2}"#,
            br#"{"a":{"b":1,"b":2}}"#,
            b"[1,]",
            b"{\"a\":1,}",
            b"tru",
            b"nulll",
            b"\xff",
        ] {
            assert_eq!(scan(body), None, "{}", String::from_utf8_lossy(body));
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(
            scan(deep.as_bytes()),
            None,
            "deeper than the fast path goes"
        );
        let wide: String = (0..=MAX_KEYS).map(|i| format!(r#""k{i}":{i},"#)).collect();
        let wide = format!("{{{}}}", wide.trim_end_matches(','));
        assert_eq!(scan(wide.as_bytes()), None, "more keys than it compares");
    }
}
