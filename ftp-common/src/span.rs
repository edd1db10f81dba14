//! Byte ranges inside one control-channel line.

/// Where a field sits inside the line handed to a parser: the address/port field the caller may
/// replace, or an argument kept for reporting.
///
/// `start` counts from the first byte of that line. Lines are at most
/// [`MAX_LINE_LEN`](crate::MAX_LINE_LEN) bytes, so `u16` offsets always suffice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: u16,
    pub len: u16,
}

impl Span {
    /// One past the last byte.
    #[inline(always)]
    pub fn end(self) -> usize {
        usize::from(self.start).saturating_add(usize::from(self.len))
    }

    /// The bytes of `line` this span covers, or `None` if it does not fit in `line`.
    #[inline(always)]
    pub fn get(self, line: &[u8]) -> Option<&[u8]> {
        line.get(usize::from(self.start)..self.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_returns_the_covered_bytes_or_none_out_of_range() {
        let line = b"PORT 1,2,3,4,5,6\r\n";
        let span = Span { start: 5, len: 11 };
        assert_eq!(span.get(line), Some(&b"1,2,3,4,5,6"[..]));
        assert_eq!(span.end(), 16);
        assert_eq!(Span { start: 17, len: 2 }.get(line), None);
        assert_eq!(Span { start: 18, len: 0 }.get(line), Some(&b""[..]));
        assert_eq!(Span { start: u16::MAX, len: u16::MAX }.get(line), None);
    }
}
