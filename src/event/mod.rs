//! Events: ids, targets, the stored event and the one function that frames it for the wire,
//! validation of what publishers send, and the JSON parse every request body goes through.

pub mod chunk;
pub mod frame;
pub mod id;
pub mod input;
pub mod json;
pub mod list_changed;
pub mod simple_scan;
pub mod target;

pub use chunk::Chunk;
pub use frame::StoredEvent;
pub use id::{Cursor, EventId, InvalidEventId};
pub use input::{InputError, NewEvent, PublishLimits, PublishRequest};
pub use json::{parse_json, scan_method, JsonError};
pub use list_changed::ListChanged;
pub use target::{Target, Viewer};
