//! Requests hyper cannot parse get the JSON error shape, like every other error.
//!
//! hyper answers an HTTP/1 request it cannot parse itself, before any handler runs, and then
//! closes the connection: a bare `400` for a malformed request line or header (a control byte in
//! a value, a garbage or HTTP/0.9 request line, an invalid or conflicting `Content-Length`, a
//! `Transfer-Encoding` other than `chunked` last), `414` for a target over its limit, `431` for
//! a head over its buffer ([`super::MAX_HEADER_BYTES`]); each with `content-length: 0` and nothing
//! else. The connection's socket ([`super::stall`]) recognises such an answer when hyper writes it
//! while no response of the service is still on its way out ([`Exchanges`]), lets hyper believe it
//! went out, and gives the socket to [`answer`], which writes the JSON error for the same status
//! (`bad_request_syntax`, `uri_too_long`, `request_header_fields_too_large`) and closes.
//!
//! A connection refused at accept (`FANOUT_MAX_CONNECTIONS_PER_CLIENT`) is answered the same way:
//! `429` `too_many_connections`, written before any request is read.
//!
//! HTTP/2 has no such answers: the h2 layer resets a malformed request's stream
//! (`PROTOCOL_ERROR`) and refuses a header list over the limit itself, with no response to carry
//! a body.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::MAX_HEADER_BYTES;

/// How long, and how much, the client's leftover input is read after the answer, so that closing
/// with unread input does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// A request hyper refused while parsing it, by the status hyper answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ParseError {
    /// `400`: the request line, a header or the message framing is not valid HTTP/1.1.
    Syntax,
    /// `414`: the request target is over hyper's limit.
    UriTooLong,
    /// `431`: the request head is over [`MAX_HEADER_BYTES`].
    HeadTooLarge,
    /// `429`: not hyper's — a connection refused at accept because its client holds as many as
    /// it may (`FANOUT_MAX_CONNECTIONS_PER_CLIENT`), answered the same way before any request is read.
    TooManyConnections,
}

impl ParseError {
    /// The status lines hyper writes, each with the error it stands for.
    const ALL: [(&'static [u8], ParseError); 3] = [
        (b"HTTP/1.1 400 Bad Request\r\n", ParseError::Syntax),
        (b"HTTP/1.1 414 URI Too Long\r\n", ParseError::UriTooLong),
        (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            ParseError::HeadTooLarge,
        ),
    ];

    fn status_line(self) -> &'static str {
        match self {
            ParseError::Syntax => "400 Bad Request",
            ParseError::UriTooLong => "414 URI Too Long",
            ParseError::HeadTooLarge => "431 Request Header Fields Too Large",
            ParseError::TooManyConnections => "429 Too Many Requests",
        }
    }

    pub(super) fn code(self) -> &'static str {
        match self {
            ParseError::Syntax => "bad_request_syntax",
            ParseError::UriTooLong => "uri_too_long",
            ParseError::HeadTooLarge => "request_header_fields_too_large",
            ParseError::TooManyConnections => "too_many_connections",
        }
    }

    fn message(self) -> String {
        match self {
            ParseError::Syntax => "the request is not valid HTTP/1.1: a malformed request line or \
                                   header (a control byte in a value, a bad method, target or \
                                   version), or an invalid, conflicting or unsupported \
                                   Content-Length / Transfer-Encoding"
                .to_owned(),
            ParseError::UriTooLong => "the request target is too long".to_owned(),
            ParseError::HeadTooLarge => format!(
                "the request head (request line and headers) is over {MAX_HEADER_BYTES} bytes"
            ),
            ParseError::TooManyConnections => "this client has as many connections open to this \
                                               replica as it may \
                                               (FANOUT_MAX_CONNECTIONS_PER_CLIENT); reuse one"
                .to_owned(),
        }
    }
}

/// `head` is hyper's own answer to a request it could not parse: one of its status lines and no
/// header but `connection`, `date` and `content-length: 0` (a response of the service, or one it
/// relays, has more, or is told apart by [`Exchanges`]).
pub(super) fn hypers_answer(head: &[u8]) -> Option<ParseError> {
    let (line, error) = ParseError::ALL
        .into_iter()
        .find(|(line, _)| head.starts_with(line))?;
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let fields = head.get(line.len()..end)?;
    let mut zero_length = false;
    for field in fields.split(|&b| b == b'\n') {
        let field = String::from_utf8_lossy(field).to_ascii_lowercase();
        let (name, value) = field.split_once(':')?;
        match name.trim() {
            "content-length" => zero_length = value.trim() == "0",
            "connection" | "date" => {}
            _ => return None,
        }
    }
    zero_length.then_some(error)
}

/// The JSON answer, whole.
fn response(error: ParseError) -> Vec<u8> {
    let body = serde_json::json!({
        "error": { "code": error.code(), "message": error.message() }
    })
    .to_string();
    format!(
        "HTTP/1.1 {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        error.status_line(),
        body.len()
    )
    .into_bytes()
}

/// Writes the JSON answer to `error` on `tcp` (within `limit`), closes the sending side, reads
/// what the client still sends for a moment, and closes.
pub(super) async fn answer(
    mut tcp: TcpStream,
    error: ParseError,
    limit: Duration,
    peer: SocketAddr,
) {
    tracing::debug!(%peer, code = error.code(), "answered a connection outside the service");
    let sent = tokio::time::timeout(limit, async {
        tcp.write_all(&response(error)).await?;
        tcp.shutdown().await
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::debug!(%error, %peer, "cannot answer an unparsable request");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "the answer to an unparsable request stalled");
            return;
        }
    }
    let mut scratch = vec![0u8; 16 * 1024];
    let mut read = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while read < LINGER_BYTES {
            match tcp.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// The service's responses on one connection that are not all on the wire yet: from the request
/// reaching the service until the socket is flushed after the response body ended. While there
/// are any, nothing hyper writes is its own parse-error answer (body bytes that happen to look
/// like one included).
#[derive(Clone, Default)]
pub struct Exchanges(Arc<Counts>);

#[derive(Default)]
struct Counts {
    /// Begun and not yet flushed after their end.
    open: AtomicUsize,
    /// Ended (body done or dropped) since the last flush.
    ended: AtomicUsize,
}

impl Exchanges {
    /// A request reached the service; the guard ends the exchange when dropped (with the
    /// response body, or with the service's future if it never answers).
    pub(super) fn begin(&self) -> Exchange {
        self.0.open.fetch_add(1, Ordering::AcqRel);
        Exchange(self.0.clone())
    }

    /// Everything hyper wrote so far is on the wire.
    pub(super) fn flushed(&self) {
        let ended = self.0.ended.swap(0, Ordering::AcqRel);
        if ended > 0 {
            self.0.open.fetch_sub(ended, Ordering::AcqRel);
        }
    }

    /// No response of the service is on its way out.
    pub(super) fn idle(&self) -> bool {
        self.0.open.load(Ordering::Acquire) == 0
    }
}

/// One request's exchange (see [`Exchanges::begin`]).
pub(super) struct Exchange(Arc<Counts>);

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::AcqRel);
    }
}

impl Exchange {
    /// `resp` with this exchange ending when hyper is done with its body.
    pub(super) fn carried_by(self, resp: Response) -> Response {
        resp.map(|inner| {
            Body::new(Carried {
                inner,
                _exchange: self,
            })
        })
    }
}

/// A response body carrying its [`Exchange`].
struct Carried {
    inner: Body,
    _exchange: Exchange,
}

impl hyper::body::Body for Carried {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_answers_are_recognised() {
        assert_eq!(
            hypers_answer(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                  date: Thu, 03 Dec 2026 14:00:00 GMT\r\n\r\n"
            ),
            Some(ParseError::HeadTooLarge)
        );
        assert_eq!(
            hypers_answer(
                b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\
                  date: Fri, 04 Dec 2026 19:12:08 GMT\r\n\r\n"
            ),
            Some(ParseError::Syntax)
        );
        assert_eq!(
            hypers_answer(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n"),
            Some(ParseError::UriTooLong)
        );
        for not_hypers in [
            &b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
               content-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nserver: uvicorn\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nbroken\r\n\r\n",
            b"id: 1\ndata: {}\n\n",
        ] {
            assert_eq!(
                hypers_answer(not_hypers),
                None,
                "{}",
                String::from_utf8_lossy(not_hypers)
            );
        }
    }

    #[test]
    fn the_answer_is_the_json_error_shape() {
        for (_, error) in ParseError::ALL {
            let text = String::from_utf8(response(error)).expect("utf8");
            let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
            assert!(head.starts_with(&format!("HTTP/1.1 {}\r\n", error.status_line())));
            assert!(head.contains(&format!("content-length: {}", body.len())));
            assert!(head.contains("connection: close"));
            let v: serde_json::Value = serde_json::from_str(body).expect("json");
            assert_eq!(v["error"]["code"], error.code());
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn exchanges_end_at_the_flush_after_their_body() {
        let x = Exchanges::default();
        assert!(x.idle());
        let a = x.begin();
        let b = x.begin();
        assert!(!x.idle());
        drop(a);
        assert!(!x.idle(), "a's last bytes may still be buffered");
        x.flushed();
        assert!(!x.idle(), "b is still open");
        drop(b);
        x.flushed();
        assert!(x.idle());
    }
}
