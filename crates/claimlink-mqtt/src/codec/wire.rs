//! The data representations of MQTT (section 1.5): integers, variable byte integers, UTF-8
//! strings, binary data, string pairs. Reading is bounded by the slice it is given.

use bytes::{BufMut, Bytes};

use super::DecodeError;

/// A cursor over one packet's bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(DecodeError::Truncated)?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A variable byte integer (at most four bytes, minimal encoding).
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let (value, used) = decode_varint(&self.buf[self.pos..])?.ok_or(DecodeError::Truncated)?;
        self.pos += used;
        Ok(value)
    }

    pub(crate) fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    /// A UTF-8 string: valid UTF-8 without U+0000 (section 1.5.4).
    pub(crate) fn string(&mut self) -> Result<&'a str, DecodeError> {
        let bytes = self.binary()?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(s)
    }
}

/// Decodes a variable byte integer at the start of `buf`: `Ok(None)` if more bytes are needed.
pub(crate) fn decode_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for (i, byte) in buf.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // Minimal encoding: a last byte of zero after the first is a longer form of a smaller value.
            if i > 0 && *byte == 0 {
                return Err(DecodeError::MalformedVarint);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 { Err(DecodeError::MalformedVarint) } else { Ok(None) }
}

/// Largest value a variable byte integer can hold.
pub(crate) const MAX_VARINT: u32 = 268_435_455;

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

pub(crate) fn put_binary(out: &mut Vec<u8>, data: &[u8]) {
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}

/// Copies a slice of the packet into owned bytes.
pub(crate) fn bytes(slice: &[u8]) -> Bytes {
    Bytes::copy_from_slice(slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_byte_integers_of_the_specification_table() {
        // MQTT 5 section 1.5.5, Table 1-1 boundaries.
        let table: [(u32, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for (value, bytes) in table {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, bytes, "{value}");
            assert_eq!(decode_varint(bytes), Ok(Some((value, bytes.len()))));
            let cut = &bytes[..bytes.len() - 1];
            assert!(cut.is_empty() || decode_varint(cut) == Ok(None), "{value}: a cut integer asks for more");
        }
        assert_eq!(decode_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f]), Err(DecodeError::MalformedVarint));
        assert_eq!(decode_varint(&[0x80, 0x00]), Err(DecodeError::MalformedVarint), "non-minimal");
    }
}
