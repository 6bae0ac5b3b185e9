//! W3C Trace Context (`traceparent`), parsed and written by hand: it is one fixed-format
//! header, and ALB must read it on every request whether or not it exports spans.
//!
//! `traceparent: 00-<trace id, 32 hex>-<parent span id, 16 hex>-<flags, 2 hex>`. A value
//! that does not parse (wrong length, upper-case or non-hex digits, an all-zero id, version
//! `ff`) is treated as absent, as the specification says, and a new trace starts.

use http::HeaderValue;

/// The fields of a `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace, shared by every span of it.
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the next one.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Whether the caller recorded its span (and asks the next hops to record theirs).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Parses a header value; `None` for anything the specification says to ignore.
    pub fn parse(value: &HeaderValue) -> Option<TraceParent> {
        let text = value.to_str().ok()?;
        // Version 00 is exactly 55 characters; a later version may append fields after a
        // dash, and its first four fields still read as version 00's.
        if text.len() < 55 || (text.len() > 55 && text.as_bytes()[55] != b'-') {
            return None;
        }
        let version = hex::<1>(&text[0..2])?[0];
        if version == 0xff || (version == 0 && text.len() != 55) {
            return None;
        }
        let dashes = [2, 35, 52].iter().all(|i| text.as_bytes()[*i] == b'-');
        let trace_id = hex::<16>(&text[3..35])?;
        let parent_id = hex::<8>(&text[36..52])?;
        let flags = hex::<1>(&text[53..55])?[0];
        let valid = dashes && trace_id != [0; 16] && parent_id != [0; 8];
        valid.then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The header value for a span `span_id` of this trace, sampled or not.
    pub fn header(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> HeaderValue {
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        push_hex(&mut text, &trace_id);
        text.push('-');
        push_hex(&mut text, &span_id);
        text.push_str(if sampled { "-01" } else { "-00" });
        HeaderValue::from_str(&text).expect("hex digits and dashes are a valid header value")
    }
}

/// Lower-case hex digits into bytes (upper case is invalid in `traceparent`).
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = value(digits[2 * i])? << 4 | value(digits[2 * i + 1])?;
    }
    Some(out)
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// Random, non-zero ids (an all-zero id is invalid).
pub fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specifications_example_and_writes_it_back() {
        let tp = TraceParent::parse(&HeaderValue::from_static(EXAMPLE)).unwrap();
        assert!(tp.sampled());
        assert_eq!(
            tp.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        let back = TraceParent::header(tp.trace_id, tp.parent_id, true);
        assert_eq!(back, EXAMPLE);
    }

    #[test]
    fn invalid_values_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                TraceParent::parse(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_later_version_with_more_fields_still_parses() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes";
        let tp = TraceParent::parse(&HeaderValue::from_static(later)).unwrap();
        assert!(!tp.sampled());
    }

    #[test]
    fn random_ids_are_never_zero() {
        assert!((0..100).all(|_| random_id::<8>() != [0; 8]));
    }
}
