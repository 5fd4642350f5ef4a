//! Session ids the proxy mints for stateless upstreams (`FANOUT_MINT_SESSION_IDS`). They carry a
//! prefix of their own, so every replica can tell a minted id (the upstream never saw it: not
//! forwarded, and its `DELETE` is answered here) from one the upstream issued (forwarded as is —
//! a stateful upstream needs it on every request).

/// What every minted id starts with; an upstream's own ids (UUIDs, hex) never do.
const PREFIX: &str = "fanout.";

/// A new minted session id: the prefix and 32 random `[0-9a-z]`.
pub fn mint() -> String {
    let random = crate::event::id::random_epoch() + &crate::event::id::random_epoch();
    format!("{PREFIX}{random}")
}

/// Whether `session` is of the minted form.
pub fn is_minted(session: &[u8]) -> bool {
    session.starts_with(PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_told_from_upstream_ones() {
        let a = mint();
        assert!(is_minted(a.as_bytes()) && a.len() == PREFIX.len() + 32);
        assert_ne!(a, mint());
        assert!(a.bytes().all(|b| b.is_ascii_graphic()));
        // The Python SDK's uuid4().hex and the TypeScript SDK's randomUUID().
        assert!(!is_minted(b"21efb8894f024ce4acb87e8f41970b4a"));
        assert!(!is_minted(b"0f8e2b1c-5d4a-4e3b-9c2d-1a0b9c8d7e6f"));
    }
}
