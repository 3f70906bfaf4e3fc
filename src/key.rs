//! [`Key`]: an id as the in-memory indexes keep it (the embedded store's index, a shard's timers, held sends and
//! left-scheduled set). Herald's own ids (notifications, deliveries, sequences, campaigns, inbox items) are 32
//! lowercase hex digits, packed here into 16 bytes: no allocation to copy one, a short hash, a 16-byte compare;
//! any other id (user ids, template ids, ids a client chose) stays text. Keys order exactly as their text does,
//! so a range over keys is a range over ids.

use std::cmp::Ordering;
use std::fmt;

/// An id in an index: 16 bytes for 32 lowercase hex digits, otherwise the text. [`Key::new`] is canonical (an
/// id of 32 lowercase hex digits is always `Hex`), so equality and hashing are those of the text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Hex([u8; 16]),
    Text(Box<str>),
}

impl Key {
    pub fn new(id: &str) -> Key {
        match parse_hex(id) {
            Some(bytes) => Key::Hex(bytes),
            None => Key::Text(id.into()),
        }
    }

    /// The id as text, without allocating.
    pub fn text(&self) -> KeyText<'_> {
        match self {
            Key::Hex(bytes) => KeyText::Hex(hex_digits(bytes)),
            Key::Text(text) => KeyText::Text(text),
        }
    }

    /// The smallest key (the empty text): where a range over every key of a pair's second part starts.
    pub fn min() -> Key {
        Key::Text(Box::default())
    }
}

/// A [`Key`]'s text: the 32 digits on the stack, or the text it holds.
pub enum KeyText<'a> {
    Hex([u8; 32]),
    Text(&'a str),
}

impl std::ops::Deref for KeyText<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            KeyText::Hex(digits) => std::str::from_utf8(digits).expect("hex digits are ASCII"),
            KeyText::Text(text) => text,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            // Big-endian nibbles of equal length: byte order is the order of the hex text.
            (Key::Hex(a), Key::Hex(b)) => a.cmp(b),
            (Key::Text(a), Key::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Key::Hex(a), Key::Text(b)) => hex_digits(a).as_slice().cmp(b.as_bytes()),
            (Key::Text(a), Key::Hex(b)) => a.as_bytes().cmp(hex_digits(b).as_slice()),
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn parse_hex(id: &str) -> Option<[u8; 16]> {
    let digits = id.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0; 16];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(bytes)
}

fn hex_digits(bytes: &[u8; 16]) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0; 32];
    for (pair, byte) in text.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_ids_pack_and_print_back_and_other_ids_stay_text() {
        let id = "0192f0c2a1b34c5d8e9fa0b1c2d3e4f5";
        assert!(matches!(Key::new(id), Key::Hex(_)));
        assert_eq!(Key::new(id).to_string(), id);
        assert_eq!(&*Key::new(id).text(), id);
        for other in ["user-1", "0192F0C2A1B34C5D8E9FA0B1C2D3E4F5", "0192f0c2a1b34c5d8e9fa0b1c2d3e4f", ""] {
            assert!(matches!(Key::new(other), Key::Text(_)), "{other}");
            assert_eq!(Key::new(other).to_string(), other);
            assert_eq!(&*Key::new(other).text(), other);
        }
    }

    #[test]
    fn keys_order_as_their_text() {
        let ids = [
            "",
            "0",
            "00000000000000000000000000000000",
            "000000000000000000000000000000000",
            "0192f0c2a1b34c5d8e9fa0b1c2d3e4f5",
            "0192f0c2a1b34c5d8e9fa0b1c2d3e4f6",
            "0192g",
            "ffffffffffffffffffffffffffffffff",
            "u-1",
        ];
        for a in ids {
            for b in ids {
                assert_eq!(Key::new(a).cmp(&Key::new(b)), a.cmp(b), "{a} vs {b}");
            }
        }
        assert!(Key::min() <= Key::new("00000000000000000000000000000000"));
    }
}
