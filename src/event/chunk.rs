//! What a stream writes next, as one write: bytes of its own (a keep-alive, a preamble, a
//! per-stream frame), or the frames of consecutive events, written straight from the stored
//! frames (a gather write) instead of being copied together first.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::StoredEvent;

#[derive(Debug, Clone)]
pub enum Chunk {
    Bytes(Bytes),
    /// At least one event; written as their frames, in order.
    Events(Vec<Arc<StoredEvent>>),
}

impl Chunk {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        match self {
            Chunk::Bytes(b) => b.len(),
            Chunk::Events(events) => events.iter().map(|e| e.frame().len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many contiguous pieces the chunk is made of.
    pub fn parts(&self) -> usize {
        match self {
            Chunk::Bytes(_) => 1,
            Chunk::Events(events) => events.len(),
        }
    }

    /// Piece `i` (`i < parts()`).
    pub fn part(&self, i: usize) -> &[u8] {
        match self {
            Chunk::Bytes(b) if i == 0 => b,
            Chunk::Events(events) => events.get(i).map_or(&[][..], |e| &e.frame()[..]),
            Chunk::Bytes(_) => &[],
        }
    }

    /// Piece `i` as a buffer of its own (shares the stored frame, no copy).
    pub fn part_bytes(&self, i: usize) -> Bytes {
        match self {
            Chunk::Bytes(b) if i == 0 => b.clone(),
            Chunk::Events(events) => events.get(i).map_or_else(Bytes::new, |e| e.frame().clone()),
            Chunk::Bytes(_) => Bytes::new(),
        }
    }

    /// One buffer (a copy when the chunk has several pieces), for writers that take one.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Chunk::Bytes(b) => b,
            Chunk::Events(events) => {
                if let [only] = events.as_slice() {
                    return only.frame().clone();
                }
                let mut buf = BytesMut::with_capacity(events.iter().map(|e| e.frame().len()).sum());
                for e in &events {
                    buf.extend_from_slice(e.frame());
                }
                buf.freeze()
            }
        }
    }
}
