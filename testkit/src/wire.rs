//! HTTP/1.1 response parsing over a raw byte stream: the status line and headers, then the body as
//! `Transfer-Encoding: chunked`, `Content-Length` or close-delimited. Shared by the raw request helper
//! ([`crate::http::raw_request`]) and the SSE client ([`crate::sse::SseConn`]).

use bytes::{Buf, BytesMut};

use crate::error::{Error, Result};

/// Status line and headers of a response.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The numeric status, e.g. 200.
    pub status: u16,
    /// The reason phrase as sent.
    pub reason: String,
    /// Header fields in the order received; names as sent (compare case-insensitively).
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
}

/// Every value of header `name` (case-insensitive) in a list of fields as received.
pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Largest response head we accept before calling the peer broken.
const MAX_HEAD: usize = 64 * 1024;

/// Tries to take a complete response head off the front of `raw`. `Ok(None)` means "need more bytes".
pub fn parse_head(raw: &mut BytesMut) -> Result<Option<ResponseHead>> {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        if raw.len() > MAX_HEAD {
            return Err(Error::Protocol(format!(
                "response head longer than {MAX_HEAD} bytes"
            )));
        }
        return Ok(None);
    };
    let head_bytes = raw.split_to(end + 4);
    let text = std::str::from_utf8(&head_bytes[..end])
        .map_err(|e| Error::Protocol(format!("response head is not UTF-8: {e}")))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(Error::Protocol(format!(
            "bad status line {status_line:?} (not HTTP/1.x)"
        )));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| Error::Protocol(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Some(ResponseHead {
        status,
        reason,
        headers,
    }))
}

/// How the body of a response is delimited.
#[derive(Debug)]
enum Mode {
    Chunked(ChunkState),
    Length(u64),
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Waiting for a `hex[;ext]\r\n` line.
    Size,
    /// Inside a chunk with this many bytes left.
    Data(u64),
    /// After a chunk's data, waiting for its `\r\n`.
    DataEnd,
    /// After the zero-size chunk: trailer lines until an empty line.
    Trailers,
}

/// Decodes a response body incrementally from raw socket bytes.
#[derive(Debug)]
pub struct BodyDecoder {
    mode: Mode,
    done: bool,
}

impl BodyDecoder {
    /// Picks the framing from the response head (RFC 9112 §6.3, for the cases a server sends us).
    pub fn for_response(head: &ResponseHead, request_method: &str) -> Result<Self> {
        let no_body = request_method.eq_ignore_ascii_case("HEAD")
            || head.status / 100 == 1
            || head.status == 204
            || head.status == 304;
        if no_body {
            return Ok(BodyDecoder {
                mode: Mode::Length(0),
                done: true,
            });
        }
        let chunked = head
            .header_all("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            return Ok(BodyDecoder {
                mode: Mode::Chunked(ChunkState::Size),
                done: false,
            });
        }
        if let Some(len) = head.header("content-length") {
            let len: u64 = len
                .parse()
                .map_err(|_| Error::Protocol(format!("bad Content-Length {len:?}")))?;
            return Ok(BodyDecoder {
                mode: Mode::Length(len),
                done: len == 0,
            });
        }
        Ok(BodyDecoder {
            mode: Mode::Close,
            done: false,
        })
    }

    /// True once the body has ended by its own framing (terminating chunk, or `Content-Length`
    /// bytes read), or by a close for a close-delimited body.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Moves every decodable byte of `raw` into `out`.
    pub fn decode(&mut self, raw: &mut BytesMut, out: &mut BytesMut) -> Result<()> {
        while !self.done && !raw.is_empty() {
            match &mut self.mode {
                Mode::Close => {
                    out.extend_from_slice(raw);
                    raw.clear();
                }
                Mode::Length(left) => {
                    let take = (*left).min(raw.len() as u64) as usize;
                    out.extend_from_slice(&raw[..take]);
                    raw.advance(take);
                    *left -= take as u64;
                    if *left == 0 {
                        self.done = true;
                    }
                }
                Mode::Chunked(state) => match *state {
                    ChunkState::Size => {
                        let Some(eol) = find(raw, b"\r\n") else {
                            if raw.len() > 1024 {
                                return Err(Error::Protocol("chunk size line too long".into()));
                            }
                            return Ok(());
                        };
                        let line = raw.split_to(eol + 2);
                        let text = std::str::from_utf8(&line[..eol]).map_err(|_| {
                            Error::Protocol("chunk size line is not UTF-8".to_string())
                        })?;
                        let hex = text.split(';').next().unwrap_or_default().trim();
                        let size = u64::from_str_radix(hex, 16).map_err(|_| {
                            Error::Protocol(format!("bad chunk size line {text:?}"))
                        })?;
                        *state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    ChunkState::Data(left) => {
                        let take = left.min(raw.len() as u64) as usize;
                        out.extend_from_slice(&raw[..take]);
                        raw.advance(take);
                        let left = left - take as u64;
                        *state = if left == 0 {
                            ChunkState::DataEnd
                        } else {
                            ChunkState::Data(left)
                        };
                    }
                    ChunkState::DataEnd => {
                        if raw.len() < 2 {
                            return Ok(());
                        }
                        if &raw[..2] != b"\r\n" {
                            return Err(Error::Protocol(
                                "chunk data not followed by CRLF".to_string(),
                            ));
                        }
                        raw.advance(2);
                        *state = ChunkState::Size;
                    }
                    ChunkState::Trailers => {
                        let Some(eol) = find(raw, b"\r\n") else {
                            return Ok(());
                        };
                        raw.advance(eol + 2);
                        if eol == 0 {
                            self.done = true;
                        }
                    }
                },
            }
        }
        Ok(())
    }

    /// The peer closed the connection. A close-delimited body ends cleanly; any other body that is
    /// not complete is truncated.
    pub fn eof(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        match &self.mode {
            Mode::Close => {
                self.done = true;
                Ok(())
            }
            Mode::Length(left) => Err(Error::Truncated(format!(
                "connection closed with {left} bytes of Content-Length body still missing"
            ))),
            Mode::Chunked(state) => Err(Error::Truncated(format!(
                "connection closed before the terminating zero-size chunk (in state {state:?})"
            ))),
        }
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> ResponseHead {
        let mut b = BytesMut::from(raw.as_bytes());
        parse_head(&mut b).expect("parse").expect("complete head")
    }

    #[test]
    fn parses_head_and_chunked_body_split_anywhere() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 1..wire.len() {
            let mut raw = BytesMut::new();
            let mut out = BytesMut::new();
            let mut h = None;
            let mut dec: Option<BodyDecoder> = None;
            for part in [&wire[..split], &wire[split..]] {
                raw.extend_from_slice(part);
                if h.is_none() {
                    h = parse_head(&mut raw).expect("head");
                    if let Some(h) = &h {
                        dec = Some(BodyDecoder::for_response(h, "GET").expect("decoder"));
                    }
                }
                if let Some(d) = dec.as_mut() {
                    d.decode(&mut raw, &mut out).expect("decode");
                }
            }
            let h = h.expect("head parsed");
            assert_eq!(h.status, 200);
            assert_eq!(h.header("content-type"), Some("text/event-stream"));
            assert_eq!(&out[..], b"hello world");
            assert!(dec.expect("decoder").is_done(), "split at {split}");
        }
    }

    #[test]
    fn content_length_and_close_delimited() {
        let h = head("HTTP/1.1 406 Not Acceptable\r\ncontent-length: 3\r\n\r\n");
        let mut d = BodyDecoder::for_response(&h, "GET").expect("decoder");
        let mut raw = BytesMut::from(&b"abcdef"[..]);
        let mut out = BytesMut::new();
        d.decode(&mut raw, &mut out).expect("decode");
        assert_eq!(&out[..], b"abc");
        assert!(d.is_done());

        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        let mut d = BodyDecoder::for_response(&h, "GET").expect("decoder");
        let mut raw = BytesMut::from(&b"xyz"[..]);
        let mut out = BytesMut::new();
        d.decode(&mut raw, &mut out).expect("decode");
        assert!(!d.is_done());
        d.eof().expect("close-delimited ends cleanly");
        assert_eq!(&out[..], b"xyz");
    }

    #[test]
    fn unterminated_chunked_body_is_truncated() {
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        let mut d = BodyDecoder::for_response(&h, "GET").expect("decoder");
        let mut raw = BytesMut::from(&b"3\r\nabc\r\n"[..]);
        let mut out = BytesMut::new();
        d.decode(&mut raw, &mut out).expect("decode");
        assert!(matches!(d.eof(), Err(Error::Truncated(_))));
    }
}
