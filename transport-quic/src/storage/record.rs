//! Record framing and checksums: how one entry is laid out in a segment.
//!
//! ```text
//! frame header (12 bytes)                       payload (length bytes)
//! +------------+-------------+------------+     +------+-------+------+------+------+
//! | length u32 | payload crc | header crc |     | type | index | term | kind | data |
//! |            | u32         | u32        |     | u8=1 | u64   | u64  | u8   | ...  |
//! +------------+-------------+------------+     +------+-------+------+------+------+
//! ```
//!
//! Little-endian; `kind` is 0 for a command, 1 for a no-op, 2 for a membership entry.
//! `payload crc` is the CRC-32 of the payload, `header crc` the CRC-32 of the 8 bytes before
//! it. The header has its own checksum so recovery can look for a valid record at every byte
//! offset after a damaged one cheaply (8 bytes hashed per offset), which is how it tells a
//! torn tail (nothing valid after the damage) from damage in the middle.

use coracle::{Entry, EntryKind, OwnedEntry};

/// Bytes of the frame header.
pub(crate) const FRAME_HEADER: usize = 12;
/// Bytes of an entry payload before its data.
pub(crate) const ENTRY_HEADER: usize = 1 + 8 + 8 + 1;
/// Payload type of an entry (the only record type of format version 1).
const RECORD_ENTRY: u8 = 1;

/// Bytes the record of an entry with `data_len` bytes of data takes.
pub(crate) fn entry_record_len(data_len: usize) -> usize {
    FRAME_HEADER + ENTRY_HEADER + data_len
}

fn kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Command => 0,
        EntryKind::Noop => 1,
        EntryKind::Membership => 2,
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Appends the framed record of `entry` to `buf`. The caller has checked that the payload
/// length fits in a `u32`.
pub(crate) fn push_entry(buf: &mut Vec<u8>, entry: &Entry<'_>) {
    let start = buf.len();
    buf.resize(start + FRAME_HEADER, 0);
    buf.push(RECORD_ENTRY);
    buf.extend_from_slice(&entry.index.to_le_bytes());
    buf.extend_from_slice(&entry.term.to_le_bytes());
    buf.push(kind_byte(entry.kind));
    buf.extend_from_slice(entry.data);
    let payload_len = (buf.len() - start - FRAME_HEADER) as u32;
    let payload_crc = crc32fast::hash(&buf[start + FRAME_HEADER..]);
    buf[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&buf[start..start + 8]);
    buf[start + 8..start + 12].copy_from_slice(&header_crc.to_le_bytes());
}

/// Reads the frame at `at` in `buf`: its payload and the offset of the next frame, or why
/// it is not a valid frame. `max_payload` bounds the length a header may claim.
pub(crate) fn read_frame(
    buf: &[u8],
    at: usize,
    max_payload: usize,
) -> Result<(&[u8], usize), &'static str> {
    let rest = buf.get(at..).unwrap_or_default();
    if rest.len() < FRAME_HEADER {
        return Err("incomplete record header");
    }
    if crc32fast::hash(&rest[..8]) != le_u32(&rest[8..12]) {
        return Err("record header checksum mismatch");
    }
    let len = le_u32(&rest[..4]) as usize;
    if len > max_payload {
        return Err("record length exceeds the limit");
    }
    let Some(payload) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Err("record extends past the end of the file");
    };
    if crc32fast::hash(payload) != le_u32(&rest[4..8]) {
        return Err("record checksum mismatch");
    }
    Ok((payload, at + FRAME_HEADER + len))
}

/// The first offset in `starts` where a valid frame starts in `buf`, if any.
pub(crate) fn find_valid_frame(
    buf: &[u8],
    starts: std::ops::Range<usize>,
    max_payload: usize,
) -> Option<usize> {
    let end = starts.end.min(buf.len().saturating_sub(FRAME_HEADER - 1));
    (starts.start..end).find(|&p| read_frame(buf, p, max_payload).is_ok())
}

/// The index of the entry in the payload of a valid frame (`None`: not an entry record).
pub(crate) fn index_of(payload: &[u8]) -> Option<u64> {
    match payload.get(..ENTRY_HEADER) {
        Some(h) if h[0] == RECORD_ENTRY => Some(le_u64(&h[1..9])),
        _ => None,
    }
}

/// Index, term and kind of an entry record (its data stays where it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
}

/// Decodes the head of the payload of a valid frame (what recovery needs of an entry).
pub(crate) fn decode_head(payload: &[u8]) -> Result<Head, &'static str> {
    if payload.len() < ENTRY_HEADER {
        return Err("record too short for an entry");
    }
    if payload[0] != RECORD_ENTRY {
        return Err("unknown record type");
    }
    let kind = match payload[17] {
        0 => EntryKind::Command,
        1 => EntryKind::Noop,
        2 => EntryKind::Membership,
        _ => return Err("unknown entry kind"),
    };
    Ok(Head {
        index: le_u64(&payload[1..9]),
        term: le_u64(&payload[9..17]),
        kind,
    })
}

/// Decodes the payload of a valid frame into an entry.
pub(crate) fn decode_entry(payload: &[u8]) -> Result<OwnedEntry, &'static str> {
    let head = decode_head(payload)?;
    Ok(OwnedEntry {
        index: head.index,
        term: head.term,
        kind: head.kind,
        data: payload[ENTRY_HEADER..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(index: u64, data: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        push_entry(
            &mut buf,
            &Entry {
                index,
                term: 7,
                kind: EntryKind::Noop,
                data,
            },
        );
        buf
    }

    #[test]
    fn a_record_roundtrips_and_its_length_is_known() {
        let buf = framed(42, b"hello");
        assert_eq!(buf.len(), entry_record_len(5));
        let (payload, next) = read_frame(&buf, 0, 1 << 20).unwrap();
        assert_eq!(next, buf.len());
        let e = decode_entry(payload).unwrap();
        assert_eq!((e.index, e.term, e.kind), (42, 7, EntryKind::Noop));
        assert_eq!(e.data, b"hello");
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let buf = framed(1, b"abc");
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    read_frame(&bad, 0, 1 << 20).is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn every_cut_is_caught_and_a_later_frame_is_found() {
        let mut buf = framed(1, b"abc");
        let first = buf.len();
        for cut in 0..first {
            assert!(read_frame(&buf[..cut], 0, 1 << 20).is_err());
        }
        buf.extend(framed(2, b"def"));
        buf[3] ^= 0x10;
        assert_eq!(find_valid_frame(&buf, 1..buf.len(), 1 << 20), Some(first));
        assert_eq!(find_valid_frame(&buf, first + 1..buf.len(), 1 << 20), None);
        assert_eq!(
            read_frame(&buf, 0, 2),
            Err("record header checksum mismatch")
        );
        assert_eq!(
            read_frame(&framed(1, b"abc"), 0, 2),
            Err("record length exceeds the limit")
        );
    }
}
