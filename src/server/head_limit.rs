//! Oversized request heads get the JSON error shape (SPEC §4.1), like every other error.
//!
//! hyper answers an HTTP/1 request head over its buffer limit ([`super::MAX_HEADER_BYTES`]) itself,
//! before any handler runs, with a bare `431` (`content-length: 0`), and then closes the
//! connection. The connection's socket ([`super::stall`]) recognises that answer when hyper writes
//! it, lets hyper believe it went out, and gives the socket to [`answer`], which writes the JSON
//! `431` instead. (HTTP/2 header lists over the limit are refused by the h2 layer, as it does.)

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::MAX_HEADER_BYTES;

/// The status line hyper writes for a head over its limit.
const HYPERS_STATUS_LINE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n";

/// How long, and how much, the client's leftover head is read after the answer, so that closing
/// with unread input does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

const CODE: &str = "request_header_fields_too_large";

/// `head` is hyper's own answer to an oversized head: its status line, no body, no content type
/// (a `431` a handler or an upstream answered has a body or a type of its own, and passes).
pub(super) fn is_hypers_answer(head: &[u8]) -> bool {
    if !head.starts_with(HYPERS_STATUS_LINE) {
        return false;
    }
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let fields = String::from_utf8_lossy(&head[HYPERS_STATUS_LINE.len()..end]).to_ascii_lowercase();
    let mut zero_length = false;
    for line in fields.split("\r\n") {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.trim() {
            "content-length" => zero_length = value.trim() == "0",
            "content-type" | "transfer-encoding" => return false,
            _ => {}
        }
    }
    zero_length
}

/// The JSON `431` response, whole.
fn response() -> Vec<u8> {
    let body = serde_json::json!({
        "error": {
            "code": CODE,
            "message": format!("the request head (request line and headers) is over {MAX_HEADER_BYTES} bytes"),
        }
    })
    .to_string();
    format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes the JSON `431` on `tcp` (within `limit`), closes the sending side, reads what the
/// client still sends for a moment, and closes.
pub(super) async fn answer(mut tcp: TcpStream, limit: Duration, peer: SocketAddr) {
    tracing::debug!(%peer, max_bytes = MAX_HEADER_BYTES, "request head too large");
    let sent = tokio::time::timeout(limit, async {
        tcp.write_all(&response()).await?;
        tcp.shutdown().await
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::debug!(%error, %peer, "cannot answer an oversized head");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "the answer to an oversized head stalled");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_answer_is_recognised() {
        assert!(is_hypers_answer(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
              date: Thu, 03 Dec 2026 14:00:00 GMT\r\n\r\n"
        ));
        assert!(!is_hypers_answer(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
              content-length: 0\r\n\r\n"
        ));
        assert!(!is_hypers_answer(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 12\r\n\r\n"
        ));
        assert!(!is_hypers_answer(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!is_hypers_answer(b"id: 1\ndata: {}\n\n"));
    }

    #[test]
    fn the_answer_is_the_json_error_shape() {
        let resp = response();
        let text = String::from_utf8(resp).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"]["code"], CODE);
    }
}
