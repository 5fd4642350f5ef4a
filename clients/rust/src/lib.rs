//! Client of mcp-fanout: publish MCP notifications and follow them from
//! any replica, with exact resume.
//!
//! - [`Publisher`]: `POST /admin/publish`, one notification or a batch, with an idempotency key
//!   per call and retries until a deadline while the service is unavailable; refusals carry the
//!   server's error code ([`ServerError`]).
//! - [`Follower`]: one `GET /mcp` stream kept open across disconnects and replicas with
//!   `Last-Event-ID`, yielding [`Item::Event`] and, when the server cannot replay from the cursor,
//!   [`Item::Resync`]: no event twice, none lost while reconnecting.
//! - [`sse`]: the SSE decoding both use (the `sse-stream` crate).
//!
//! An MCP server with replicas gets a shared bus from these two: each replica publishes its
//! changes with a [`Publisher`] and forwards what one [`Follower`] per process yields to its own
//! clients (`examples/rmcp_listen.rs` does it for an `rmcp` server's `subscriptions/listen`).
//!
//! ```
//! use mcp_fanout_client::{EventId, Item, Notification};
//!
//! // What a follower yields is typed; what a publisher sends is the server's publish body.
//! let n = Notification::resource_updated("file:///a.txt");
//! assert_eq!(n.method, "notifications/resources/updated");
//! let head: EventId = "k2f9x0c1m4q8z7ab-7".parse().unwrap();
//! let item = Item::Resync(mcp_fanout_client::Resync { head: head.clone() });
//! assert!(matches!(item, Item::Resync(r) if r.head == head));
//! ```

mod backoff;
mod error;
mod follower;
mod id;
mod publisher;
pub mod sse;

pub use error::ServerError;
pub use follower::{Event, FollowError, Follower, FollowerBuilder, Item, Resync, Status};
pub use id::{EventId, InvalidEventId};
pub use publisher::{Notification, PublishError, Publisher};
