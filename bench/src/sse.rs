//! A cheap SSE reader: HTTP/1.1 response head, chunked decoding, and just enough SSE parsing to
//! count frames, read the event id's order key and the `"n"` (publish index) and `"t"` (send time,
//! unix nanos) numbers the bench puts into every event's params. No allocation per frame.

/// What the reader got out of one complete SSE frame that carried data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Order key from the `id:` line: the seq of `<epoch>-<seq>` (mcp-fanout), or
    /// `seconds << 20 | tag` of `<seconds>:<tag>` (nchan). `None` without an id.
    pub key: Option<u64>,
    /// The `"n":` number of the data (the bench's publish index).
    pub n: Option<u64>,
    /// The `"t":` number of the data (send time, unix nanos).
    pub t: Option<u64>,
}

/// Longest line kept; longer lines are cut (the numbers the bench needs come first).
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size.
    Size(u64),
    /// Skipping a chunk extension up to the end of the size line.
    Ext(u64),
    /// Inside chunk data: bytes left.
    Data(u64),
    /// After the data: expecting CRLF.
    DataEnd,
    /// The last chunk arrived.
    Done,
}

/// Decodes the body (chunked or not) and parses SSE lines out of it.
#[derive(Debug)]
pub struct SseParser {
    chunked: bool,
    chunk: Chunk,
    line: Vec<u8>,
    cut: bool,
    id_key: Option<u64>,
    data: Option<(Option<u64>, Option<u64>)>,
    /// The `id:` of the frame being read (the SSE "last event ID buffer").
    id_buf: Vec<u8>,
    /// The last event id as of the last complete frame: what a client resumes from.
    resume_id: Vec<u8>,
    /// The server's `retry:` (milliseconds), when it sent one.
    retry_ms: Option<u64>,
}

impl SseParser {
    /// A parser for a body with (`chunked`) or without chunked transfer coding.
    pub fn new(chunked: bool) -> SseParser {
        SseParser {
            chunked,
            chunk: Chunk::Size(0),
            line: Vec::with_capacity(256),
            cut: false,
            id_key: None,
            data: None,
            id_buf: Vec::with_capacity(64),
            resume_id: Vec::with_capacity(64),
            retry_ms: None,
        }
    }

    /// The id to send as `Last-Event-ID` on a reconnect: the last one set as of the last complete
    /// frame (as an `EventSource` keeps it), `None` before any.
    pub fn resume_id(&self) -> Option<&[u8]> {
        (!self.resume_id.is_empty()).then_some(self.resume_id.as_slice())
    }

    /// Takes over what an SSE client keeps across a reconnect from the stream it replaces: the
    /// last event id and the reconnection delay (a fresh parser, nothing fed yet).
    pub fn keep_across_reconnect(&mut self, old: &SseParser) {
        self.id_buf.clone_from(&old.resume_id);
        self.resume_id.clone_from(&old.resume_id);
        self.retry_ms = self.retry_ms.or(old.retry_ms);
    }

    /// The reconnection delay the server asked for with `retry:`.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// True once the terminating chunk was read.
    pub fn done(&self) -> bool {
        self.chunk == Chunk::Done
    }

    /// Feeds raw body bytes; calls `on_frame` for every complete frame with data.
    pub fn feed(&mut self, mut input: &[u8], on_frame: &mut impl FnMut(FrameInfo)) {
        if !self.chunked {
            self.sse(input, on_frame);
            return;
        }
        while !input.is_empty() {
            match self.chunk {
                Chunk::Done => return,
                Chunk::Size(acc) => {
                    let b = input[0];
                    input = &input[1..];
                    self.chunk = match b {
                        b'0'..=b'9' => Chunk::Size(acc * 16 + u64::from(b - b'0')),
                        b'a'..=b'f' => Chunk::Size(acc * 16 + u64::from(b - b'a' + 10)),
                        b'A'..=b'F' => Chunk::Size(acc * 16 + u64::from(b - b'A' + 10)),
                        b'\n' if acc == 0 => Chunk::Done,
                        b'\n' => Chunk::Data(acc),
                        b';' => Chunk::Ext(acc),
                        _ => Chunk::Size(acc),
                    };
                }
                Chunk::Ext(acc) => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.chunk = if acc == 0 {
                            Chunk::Done
                        } else {
                            Chunk::Data(acc)
                        };
                    }
                }
                Chunk::Data(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    let (now, rest) = input.split_at(take);
                    self.sse(now, on_frame);
                    input = rest;
                    let left = left - take as u64;
                    self.chunk = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                }
                Chunk::DataEnd => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.chunk = Chunk::Size(0);
                    }
                }
            }
        }
    }

    fn sse(&mut self, input: &[u8], on_frame: &mut impl FnMut(FrameInfo)) {
        let mut rest = input;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            self.push(head);
            self.line_done(on_frame);
            rest = &tail[1..];
        }
        self.push(rest);
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        if bytes.len() > room {
            self.cut = true;
        }
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn line_done(&mut self, on_frame: &mut impl FnMut(FrameInfo)) {
        let mut line: &[u8] = &self.line;
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.is_empty() {
            // A frame ends: the id buffer becomes the stream's last event id, data or not.
            self.resume_id.clone_from(&self.id_buf);
            if let Some((n, t)) = self.data.take() {
                on_frame(FrameInfo {
                    key: self.id_key,
                    n,
                    t,
                });
            }
            self.id_key = None;
        } else if let Some(v) = field(line, b"id") {
            self.id_key = order_key(v);
            self.id_buf.clear();
            self.id_buf.extend_from_slice(v);
        } else if let Some(v) = field(line, b"retry") {
            self.retry_ms = digits(v);
        } else if let Some(v) = field(line, b"data") {
            if !v.is_empty() {
                let (n, t) = self.data.unwrap_or((None, None));
                self.data = Some((
                    n.or_else(|| number_after(v, b"\"n\":")),
                    t.or_else(|| number_after(v, b"\"t\":")),
                ));
            }
        }
        self.line.clear();
        self.cut = false;
    }
}

/// The value of `name: value` (one optional space after the colon).
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// Order key of an event id: `<epoch>-<seq>` → seq; `<secs>:<tag>` (nchan, tag maybe in
/// brackets) → `secs << 20 | tag`.
pub fn order_key(id: &[u8]) -> Option<u64> {
    if let Some(dash) = id.iter().rposition(|&b| b == b'-') {
        return digits(&id[dash + 1..]);
    }
    let colon = id.iter().position(|&b| b == b':')?;
    let secs = digits(&id[..colon])?;
    let tag: Vec<u8> = id[colon + 1..]
        .iter()
        .copied()
        .filter(u8::is_ascii_digit)
        .collect();
    let tag = digits(&tag).unwrap_or(0);
    Some((secs << 20) | (tag & 0xF_FFFF))
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        s.iter()
            .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0')),
    )
}

/// The decimal number right after `pat` in `hay`.
fn number_after(hay: &[u8], pat: &[u8]) -> Option<u64> {
    let at = hay.windows(pat.len()).position(|w| w == pat)? + pat.len();
    let rest = &hay[at..];
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    digits(&rest[..end])
}

/// Parsed response head: status code and whether the body is chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// HTTP status.
    pub status: u16,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

/// Parses a response head (everything before the blank line).
pub fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    Some(Head { status, chunked })
}

/// The position just after the `\r\n\r\n` ending the head, if present.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunked: bool, pieces: &[&[u8]]) -> Vec<FrameInfo> {
        let mut p = SseParser::new(chunked);
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece, &mut |f| out.push(f));
        }
        out
    }

    #[test]
    fn plain_frames_and_comments() {
        let body: &[u8] = b": keepalive\n\nid: abc-12\ndata: {\"jsonrpc\":\"2.0\",\"params\":{\"n\":7,\"t\":99}}\n\nretry: 10\n\n";
        let got = frames(false, &[body]);
        assert_eq!(
            got,
            vec![FrameInfo {
                key: Some(12),
                n: Some(7),
                t: Some(99)
            }]
        );
    }

    #[test]
    fn chunked_split_anywhere() {
        let sse = b"id: e-5\ndata: {\"n\":1,\"t\":2}\n\nid: e-6\r\ndata: {\"n\":2,\"t\":3}\r\n\r\n";
        let mut body = Vec::new();
        for part in sse.chunks(7) {
            body.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
            body.extend_from_slice(part);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            let got = frames(true, &[a, b]);
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[0].key, Some(5));
            assert_eq!(got[1].n, Some(2));
        }
        let mut p = SseParser::new(true);
        p.feed(&body, &mut |_| {});
        assert!(p.done());
    }

    #[test]
    fn resume_id_is_the_last_complete_frames() {
        let mut p = SseParser::new(false);
        assert_eq!(p.resume_id(), None);
        p.feed(b"id: e-0\nretry: 2000\ndata: \n\n", &mut |_| {});
        assert_eq!(p.resume_id(), Some(&b"e-0"[..]), "a priming frame sets it");
        assert_eq!(p.retry_ms(), Some(2000));
        p.feed(
            b"id: e-1\ndata: {\"n\":1}\n\nid: e-2\ndata: {\"n\"",
            &mut |_| {},
        );
        assert_eq!(
            p.resume_id(),
            Some(&b"e-1"[..]),
            "not the frame still being read"
        );
        p.feed(b":2}\n\ndata: {\"n\":3}\n\n", &mut |_| {});
        assert_eq!(
            p.resume_id(),
            Some(&b"e-2"[..]),
            "a frame without id keeps the last"
        );
    }

    #[test]
    fn empty_data_is_no_frame() {
        let got = frames(false, &[b"id: e-3\nretry: 5\ndata: \n\n"]);
        assert!(got.is_empty());
    }

    #[test]
    fn nchan_ids() {
        assert_eq!(order_key(b"1700000000:3"), Some((1_700_000_000 << 20) | 3));
        assert_eq!(
            order_key(b"1700000000:[3]"),
            Some((1_700_000_000 << 20) | 3)
        );
        assert!(order_key(b"1700000000:0") < order_key(b"1700000001:0"));
        assert_eq!(order_key(b"x-10"), Some(10));
        assert_eq!(order_key(b"junk"), None);
    }

    #[test]
    fn heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y").expect("head");
        assert_eq!(
            h,
            Head {
                status: 200,
                chunked: true
            }
        );
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nabc"), Some(19));
    }
}
