//! Byte-level mutations of a message on the wire, for the parser property tests of `head`
//! and `body` (each adds the mutations of its own grammar: duplicated header lines, inflated
//! chunk sizes). Positions wrap around the message's length, so any `usize` is a valid one.

use proptest::prelude::*;

/// One change to a message's bytes.
#[derive(Debug, Clone)]
pub(crate) enum ByteMutation {
    Insert(usize, u8),
    Delete(usize),
    Flip(usize, u8),
    Duplicate(usize, usize),
    /// The `k`th CRLF loses its CR.
    CrlfToLf(usize),
    /// The `k`th CRLF loses its LF.
    CrlfToCr(usize),
}

/// Any [`ByteMutation`]; inserted bytes are arbitrary or one of `specials` (the bytes the
/// grammar gives meaning to).
pub(crate) fn byte_mutation(specials: &'static [u8]) -> impl Strategy<Value = ByteMutation> {
    prop_oneof![
        (
            any::<usize>(),
            prop_oneof![any::<u8>(), prop::sample::select(specials)]
        )
            .prop_map(|(at, b)| ByteMutation::Insert(at, b)),
        any::<usize>().prop_map(ByteMutation::Delete),
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| ByteMutation::Flip(at, bit)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| ByteMutation::Duplicate(at, n)),
        any::<usize>().prop_map(ByteMutation::CrlfToLf),
        any::<usize>().prop_map(ByteMutation::CrlfToCr),
    ]
}

/// Where the CRLFs of `m` start.
pub(crate) fn crlfs(m: &[u8]) -> Vec<usize> {
    m.windows(2)
        .enumerate()
        .filter(|(_, w)| *w == b"\r\n")
        .map(|(i, _)| i)
        .collect()
}

/// Applies `mutation` to `m` (a no-op where it has nothing to act on).
pub(crate) fn apply(m: &mut Vec<u8>, mutation: &ByteMutation) {
    let len = m.len();
    match *mutation {
        ByteMutation::Insert(at, b) => m.insert(at % (len + 1), b),
        ByteMutation::Delete(_) | ByteMutation::Flip(..) | ByteMutation::Duplicate(..)
            if len == 0 => {}
        ByteMutation::Delete(at) => {
            m.remove(at % len);
        }
        ByteMutation::Flip(at, bit) => m[at % len] ^= 1 << bit,
        ByteMutation::Duplicate(at, n) => {
            let at = at % len;
            let piece = m[at..(at + n).min(len)].to_vec();
            m.splice(at..at, piece);
        }
        ByteMutation::CrlfToLf(k) | ByteMutation::CrlfToCr(k) => {
            let ends = crlfs(m);
            if ends.is_empty() {
                return;
            }
            let end = ends[k % ends.len()];
            let drop = if matches!(mutation, ByteMutation::CrlfToLf(_)) {
                end
            } else {
                end + 1
            };
            m.remove(drop);
        }
    }
}
