//! The fuzz input, read front to back as small fields.
//!
//! A hand-written reader rather than `arbitrary`: no dependency, and a corpus
//! file keeps its meaning as long as the order of reads in a target does.
//! Reading past the end yields zeros, so every input, even the empty one, is
//! a complete case.

/// A cursor over the fuzz input.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// One byte (0 when exhausted).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A flag: the low bit of one byte.
    pub fn flag(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A choice among `n` (> 0) alternatives.
    pub fn choose(&mut self, n: u8) -> u8 {
        self.u8() % n
    }

    /// Up to `max` bytes: a length byte, then that many bytes (fewer when
    /// the input ends first).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let want = usize::from(self.u8()).min(max);
        let (taken, rest) = self.data.split_at(want.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_zeros_past_the_end() {
        let mut i = Input::new(&[1, 2, 3, 4, 5]);
        assert_eq!(i.u8(), 1);
        assert_eq!(i.u16(), 0x0302);
        assert_eq!(i.bytes(8), &[5][..], "a length byte of 4, one byte left");
        assert_eq!(i.u32(), 0);
        assert!(!i.flag());
        let mut j = Input::new(&[3, 9, 8, 7, 6]);
        assert_eq!(j.bytes(2), &[9, 8][..], "capped at max");
        assert_eq!(j.rest(), &[7, 6][..]);
    }
}
