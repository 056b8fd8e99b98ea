//! Test input for the parsers of hostile data: arbitrary bytes, or runs of
//! a format's own fragments (which reach the branches random bytes miss).

use proptest::prelude::*;

/// Up to `max` of `pieces`, in any order and number.
pub(crate) fn fragments(pieces: Vec<&'static [u8]>, max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::sample::select(pieces), 0..max).prop_map(|v| v.concat())
}

/// Arbitrary bytes (up to `max`), or `like`.
pub(crate) fn or_any_bytes(
    like: impl Strategy<Value = Vec<u8>>,
    max: usize,
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..max), like]
}
