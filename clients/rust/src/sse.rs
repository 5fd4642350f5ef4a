//! Decoding `text/event-stream` bodies: the one SSE parser of the project (the `sse-stream`
//! crate), shared by the [`Follower`](crate::Follower) and the `mcp-fanout` binary.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
pub use sse_stream::Sse;

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed.
    #[error("{0}")]
    Http(String),
    /// Nothing arrived, not even a keep-alive comment, for this long.
    #[error("nothing received for {0:?}")]
    Idle(Duration),
}

/// The SSE blocks of a response body, in order, as `sse-stream` decodes them: every block,
/// metadata-only ones too (`id:` with empty `data:`, `retry:` alone); comments (keep-alives) are
/// skipped. An error ends the stream.
///
/// With `idle`, the body fails with [`BodyError::Idle`] when no bytes at all (comments
/// included) arrive for that long.
///
/// ```
/// use futures_util::StreamExt;
/// use mcp_fanout_client::sse;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let wire = ": keepalive\n\nid: e-1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\nid: e-1\nretry: 3000\ndata: \n\n";
/// let chunks = futures_util::stream::iter(wire.as_bytes().chunks(7).map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c))));
/// let blocks: Vec<_> = sse::decode(chunks, None).collect().await;
/// let blocks: Vec<sse::Sse> = blocks.into_iter().map(Result::unwrap).collect();
/// assert_eq!(blocks.len(), 2, "the comment is skipped");
/// assert_eq!(blocks[0].id.as_deref(), Some("e-1"));
/// assert!(blocks[0].data.as_deref().unwrap().contains("list_changed"));
/// assert_eq!((blocks[1].data.as_deref(), blocks[1].retry), (Some(""), Some(3000)));
/// # });
/// ```
pub fn decode<S, E>(
    body: S,
    idle: Option<Duration>,
) -> impl Stream<Item = Result<Sse, sse_stream::Error>> + Send + Unpin
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let bytes = futures_util::stream::unfold((body, false), move |(mut body, done)| async move {
        if done {
            return None;
        }
        let next = match idle {
            Some(limit) => match tokio::time::timeout(limit, body.next()).await {
                Ok(next) => next,
                Err(_) => return Some((Err(BodyError::Idle(limit)), (body, true))),
            },
            None => body.next().await,
        };
        match next? {
            Ok(chunk) => Some((Ok(chunk), (body, false))),
            Err(e) => Some((Err(BodyError::Http(e.to_string())), (body, true))),
        }
    });
    sse_stream::SseByteStream::new(Box::pin(bytes))
}

/// The JSON-RPC messages in a response body: each block's `data` that parses as JSON.
///
/// ```
/// use futures_util::StreamExt;
/// use mcp_fanout_client::sse;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let wire = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n\r\n";
/// let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(wire))]);
/// let first = sse::messages(body).next().await.unwrap().unwrap();
/// assert_eq!(first["id"], 1);
/// # });
/// ```
pub fn messages<S, E>(
    body: S,
) -> impl Stream<Item = Result<serde_json::Value, sse_stream::Error>> + Send + Unpin
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    Box::pin(decode(body, None).filter_map(|block| async move {
        match block {
            Ok(Sse { data: Some(d), .. }) => serde_json::from_str(&d).ok().map(Ok),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    }))
}
