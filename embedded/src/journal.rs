//! A Raft log that survives a reboot, on any `embedded-storage` NorFlash:
//! [`FlashLog`] keeps the log in RAM (the core's [`ArrayLog`]) and journals
//! every change (hard state, appended entry, truncated suffix) as a record
//! in flash; on boot [`FlashLog::open`] replays the journal. [`MarkStore`]
//! keeps the UDP link's send-counter mark the same way.
//!
//! Writes are gathered in RAM and written to flash by [`Durable::sync`],
//! which the node asks for before it acknowledges entries or grants a vote:
//! one flash write for many changes (group commit). A board that reboots
//! keeps its term, its vote and every entry it acknowledged.
//!
//! # Record format
//!
//! Records are 4-byte aligned, from offset 0:
//!
//! ```text
//! offset  size  field
//!      0     2  payload length, little-endian
//!      2     1  kind (1 hard state, 2 entry, 3 truncate, 4 counter mark)
//!      3     1  0
//!      4     4  CRC-32 (IEEE) of bytes 0..4 and of the payload
//!      8     n  payload (integers little-endian), then 0xff up to 4-byte alignment
//! ```
//!
//! An erased header (`ff ff ff ff`) ends the journal. A header that does
//! not check (a write torn by a power cut) is skipped word by word, so a
//! torn tail loses only the records that were never synced.
//!
//! The journal is never compacted: when the flash is full, [`Durable::sync`]
//! fails with [`StorageError::Full`] and the node stops acknowledging (it
//! never loses what it acknowledged). Size the flash for the log you keep.
//!
//! ```
//! use coracle::{Entry, EntryKind, HardState, LogStorage};
//! use coracle_embedded::journal::{FlashLog, RamFlash};
//! use coracle_udp::node::Durable;
//!
//! let mut log: FlashLog<RamFlash<4096>, 16, 8> = FlashLog::open(RamFlash::new()).unwrap();
//! log.set_hard_state(HardState { current_term: 3, voted_for: Some(2) }).unwrap();
//! log.append(&Entry { index: 1, term: 3, kind: EntryKind::Command, data: b"x" }).unwrap();
//! log.sync().unwrap();
//!
//! // Power cycle: the flash is all that is left.
//! let log: FlashLog<RamFlash<4096>, 16, 8> = FlashLog::open(log.into_flash()).unwrap();
//! assert_eq!(log.hard_state().voted_for, Some(2));
//! assert_eq!(log.entry(1).unwrap().data, b"x");
//! ```

use core::fmt;

use coracle::{ArrayLog, Entry, EntryKind, HardState, Index, LogStorage, StorageError, Term};
use coracle_udp::node::Durable;
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};

const HEADER: usize = 8;
/// The largest record payload (an entry of 239 bytes of data).
pub const MAX_PAYLOAD: usize = 256;
/// Bytes of records gathered in RAM between two syncs before they are
/// written early.
const PENDING: usize = 512;

const KIND_HARD_STATE: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_MARK: u8 = 4;

/// Why a journal could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalError {
    /// The flash's read or write unit does not divide 4 bytes.
    Alignment,
    /// The flash failed.
    Flash,
    /// A record does not fit the RAM log (more entries than its capacity,
    /// or an entry larger than a slot).
    LogTooSmall,
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Alignment => "flash read/write unit does not divide 4 bytes",
            Self::Flash => "flash failed",
            Self::LogTooSmall => "journal holds more than the RAM log can",
        })
    }
}

/// CRC-32 (IEEE 802.3), bitwise: small code, and records are short.
fn crc32(mut crc: u32, bytes: &[u8]) -> u32 {
    crc = !crc;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Reads `(kind, payload length, record length)` at `offset`, `None` at
/// the end of the journal, `Some(Err)` for a word that is not a valid
/// record.
fn read_record<F: ReadNorFlash>(
    flash: &mut F,
    offset: usize,
    payload: &mut [u8; MAX_PAYLOAD],
) -> Option<Result<(u8, usize, usize), ()>> {
    let mut header = [0u8; HEADER];
    if offset + HEADER > flash.capacity() || flash.read(offset as u32, &mut header).is_err() {
        return None;
    }
    if header[..4] == [0xff; 4] {
        return None;
    }
    let len = usize::from(u16::from_le_bytes([header[0], header[1]]));
    let total = HEADER + padded(len);
    if len > MAX_PAYLOAD || header[3] != 0 || offset + total > flash.capacity() {
        return Some(Err(()));
    }
    let body = &mut payload[..padded(len).min(MAX_PAYLOAD)];
    if flash.read((offset + HEADER) as u32, body).is_err() {
        return Some(Err(()));
    }
    let crc = crc32(crc32(0, &header[..4]), &payload[..len]);
    if crc.to_le_bytes() != header[4..8] {
        return Some(Err(()));
    }
    Some(Ok((header[2], len, total)))
}

/// Appends a record to `out`; `false` if it does not fit.
fn encode_record<const P: usize>(
    out: &mut heapless::Vec<u8, P>,
    kind: u8,
    parts: &[&[u8]],
) -> bool {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > MAX_PAYLOAD || out.len() + HEADER + padded(len) > P {
        return false;
    }
    let head = [(len & 0xff) as u8, (len >> 8) as u8, kind, 0];
    let mut crc = crc32(0, &head);
    for part in parts {
        crc = crc32(crc, part);
    }
    // Room was checked above: none of these fail.
    let _ = out.extend_from_slice(&head);
    let _ = out.extend_from_slice(&crc.to_le_bytes());
    for part in parts {
        let _ = out.extend_from_slice(part);
    }
    for _ in len..padded(len) {
        let _ = out.push(0xff);
    }
    true
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

fn check_alignment<F: NorFlash>() -> Result<(), JournalError> {
    let ok = |unit: usize| unit != 0 && unit <= 4 && 4 % unit == 0;
    if ok(F::READ_SIZE) && ok(F::WRITE_SIZE) {
        Ok(())
    } else {
        Err(JournalError::Alignment)
    }
}

/// A log of at most `CAP` entries of at most `DATA` bytes, in RAM, journaled
/// to the flash `F` (see the [module documentation](self)).
pub struct FlashLog<F: NorFlash, const CAP: usize, const DATA: usize> {
    flash: F,
    log: ArrayLog<CAP, DATA>,
    /// Flash offset of the next record.
    end: usize,
    /// Records not yet written to flash.
    pending: heapless::Vec<u8, PENDING>,
    /// Records replayed at open.
    replayed: usize,
}

impl<F: NorFlash, const CAP: usize, const DATA: usize> fmt::Debug for FlashLog<F, CAP, DATA> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlashLog")
            .field("end", &self.end)
            .field("pending", &self.pending.len())
            .field("last_index", &self.log.last_index())
            .finish_non_exhaustive()
    }
}

impl<F: NorFlash, const CAP: usize, const DATA: usize> FlashLog<F, CAP, DATA> {
    /// Replays the journal in `flash` (an erased flash is an empty log).
    ///
    /// # Errors
    /// See [`JournalError`].
    pub fn open(mut flash: F) -> Result<Self, JournalError> {
        check_alignment::<F>()?;
        let mut log = ArrayLog::new();
        let mut payload = [0u8; MAX_PAYLOAD];
        let mut offset = 0;
        let mut replayed = 0;
        while let Some(record) = read_record(&mut flash, offset, &mut payload) {
            let Ok((kind, len, total)) = record else {
                offset += 4;
                continue;
            };
            offset += total;
            replayed += 1;
            let p = &payload[..len];
            match kind {
                KIND_HARD_STATE if len == 17 => {
                    let voted_for = (p[8] != 0).then(|| le_u64(p, 9));
                    let hs = HardState {
                        current_term: le_u64(p, 0),
                        voted_for,
                    };
                    log.set_hard_state(hs)
                        .map_err(|_| JournalError::LogTooSmall)?;
                }
                KIND_ENTRY if len >= 17 => {
                    let index = le_u64(p, 0);
                    let kind = match p[16] {
                        0 => EntryKind::Command,
                        1 => EntryKind::Noop,
                        _ => EntryKind::Membership,
                    };
                    if index <= log.last_index() && index >= log.first_index() {
                        log.truncate_suffix(index)
                            .map_err(|_| JournalError::LogTooSmall)?;
                    }
                    let entry = Entry {
                        index,
                        term: le_u64(p, 8),
                        kind,
                        data: &p[17..],
                    };
                    log.append(&entry).map_err(|_| JournalError::LogTooSmall)?;
                }
                KIND_TRUNCATE if len == 8 => {
                    let from = le_u64(p, 0);
                    if from <= log.last_index() {
                        log.truncate_suffix(from)
                            .map_err(|_| JournalError::LogTooSmall)?;
                    }
                }
                // Counter marks live in a MarkStore; unknown kinds are skipped.
                _ => {}
            }
        }
        Ok(Self {
            flash,
            log,
            end: offset,
            pending: heapless::Vec::new(),
            replayed,
        })
    }

    /// Records replayed when the journal was opened.
    #[must_use]
    pub const fn replayed(&self) -> usize {
        self.replayed
    }

    /// Bytes of flash the journal uses (synced records).
    #[must_use]
    pub const fn used(&self) -> usize {
        self.end
    }

    /// The flash back (to reopen it, as after a reboot).
    pub fn into_flash(self) -> F {
        self.flash
    }

    fn write_pending(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.end + self.pending.len() > self.flash.capacity() {
            return Err(StorageError::Full);
        }
        self.flash
            .write(self.end as u32, &self.pending)
            .map_err(|_| StorageError::Unavailable)?;
        self.end += self.pending.len();
        self.pending.clear();
        Ok(())
    }

    fn record(&mut self, kind: u8, parts: &[&[u8]]) -> Result<(), StorageError> {
        if encode_record(&mut self.pending, kind, parts) {
            return Ok(());
        }
        self.write_pending()?;
        if encode_record(&mut self.pending, kind, parts) {
            Ok(())
        } else {
            Err(StorageError::EntryTooLarge)
        }
    }
}

impl<F: NorFlash, const CAP: usize, const DATA: usize> LogStorage for FlashLog<F, CAP, DATA> {
    fn hard_state(&self) -> HardState {
        self.log.hard_state()
    }

    fn set_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        let voted = [u8::from(hs.voted_for.is_some())];
        self.record(
            KIND_HARD_STATE,
            &[
                &hs.current_term.to_le_bytes(),
                &voted,
                &hs.voted_for.unwrap_or(0).to_le_bytes(),
            ],
        )?;
        self.log.set_hard_state(hs)
    }

    fn first_index(&self) -> Index {
        self.log.first_index()
    }

    fn last_index(&self) -> Index {
        self.log.last_index()
    }

    fn term(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }

    fn entry(&self, index: Index) -> Option<Entry<'_>> {
        self.log.entry(index)
    }

    fn append(&mut self, entry: &Entry<'_>) -> Result<(), StorageError> {
        // The RAM log checks index, room and size first: nothing is
        // journaled that the log refused.
        self.log.append(entry)?;
        let kind = [match entry.kind {
            EntryKind::Command => 0,
            EntryKind::Noop => 1,
            EntryKind::Membership => 2,
        }];
        let result = self.record(
            KIND_ENTRY,
            &[
                &entry.index.to_le_bytes(),
                &entry.term.to_le_bytes(),
                &kind,
                entry.data,
            ],
        );
        if result.is_err() {
            let _ = self.log.truncate_suffix(entry.index);
        }
        result
    }

    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        self.record(KIND_TRUNCATE, &[&from.to_le_bytes()])?;
        self.log.truncate_suffix(from)
    }

    /// The journal keeps every entry (it has no snapshots), so compaction
    /// is refused.
    fn compact(&mut self, _through: Index) -> Result<(), StorageError> {
        Err(StorageError::Unavailable)
    }
}

impl<F: NorFlash, const CAP: usize, const DATA: usize> Durable for FlashLog<F, CAP, DATA> {
    fn sync(&mut self) -> Result<(), StorageError> {
        self.write_pending()
    }
}

/// The send-counter mark of a UDP link (see `coracle_udp::counter`), in a
/// flash of its own: each mark is a record appended and written at once;
/// the last valid one wins. When the flash is full it is erased and the
/// mark written again (a power cut in between loses the mark: the link
/// then resumes from 0, which its peers drop as replays until it passes
/// their window; give it room for many marks).
pub struct MarkStore<F: NorFlash> {
    flash: F,
    end: usize,
    mark: Option<u64>,
}

impl<F: NorFlash> fmt::Debug for MarkStore<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MarkStore")
            .field("end", &self.end)
            .field("mark", &self.mark)
            .finish_non_exhaustive()
    }
}

impl<F: NorFlash> MarkStore<F> {
    /// Reads the last mark in `flash`.
    ///
    /// # Errors
    /// [`JournalError::Alignment`] for a flash with a coarse write unit.
    pub fn open(mut flash: F) -> Result<Self, JournalError> {
        check_alignment::<F>()?;
        let mut payload = [0u8; MAX_PAYLOAD];
        let mut offset = 0;
        let mut mark = None;
        while let Some(record) = read_record(&mut flash, offset, &mut payload) {
            match record {
                Ok((KIND_MARK, 8, total)) => {
                    mark = Some(le_u64(&payload, 0));
                    offset += total;
                }
                Ok((_, _, total)) => offset += total,
                Err(()) => offset += 4,
            }
        }
        Ok(Self {
            flash,
            end: offset,
            mark,
        })
    }

    /// The last mark stored.
    #[must_use]
    pub const fn mark(&self) -> Option<u64> {
        self.mark
    }

    /// Stores `mark` durably.
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] if the flash failed.
    pub fn store(&mut self, mark: u64) -> Result<(), StorageError> {
        let mut record: heapless::Vec<u8, 16> = heapless::Vec::new();
        encode_record(&mut record, KIND_MARK, &[&mark.to_le_bytes()]);
        if self.end + record.len() > self.flash.capacity() {
            let cap = self.flash.capacity() as u32;
            self.flash
                .erase(0, cap)
                .map_err(|_| StorageError::Unavailable)?;
            self.end = 0;
        }
        self.flash
            .write(self.end as u32, &record)
            .map_err(|_| StorageError::Unavailable)?;
        self.end += record.len();
        self.mark = Some(mark);
        Ok(())
    }

    /// The flash back.
    pub fn into_flash(self) -> F {
        self.flash
    }
}

/// A NorFlash of `SIZE` bytes in RAM, erased to 0xff, that enforces NOR
/// rules (a write only clears bits): for tests, and as a model of the
/// semihosting flash of the QEMU boards.
#[derive(Clone)]
pub struct RamFlash<const SIZE: usize> {
    bytes: [u8; SIZE],
    /// Fail writes after this many more bytes (tearing the one that
    /// crosses it), to test power cuts.
    pub cut_after: Option<usize>,
}

impl<const SIZE: usize> fmt::Debug for RamFlash<SIZE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RamFlash").field("size", &SIZE).finish()
    }
}

impl<const SIZE: usize> Default for RamFlash<SIZE> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const SIZE: usize> RamFlash<SIZE> {
    /// An erased flash.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            bytes: [0xff; SIZE],
            cut_after: None,
        }
    }

    /// The raw contents.
    #[must_use]
    pub const fn bytes(&self) -> &[u8; SIZE] {
        &self.bytes
    }
}

/// The error of a [`RamFlash`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamFlashError {
    /// Out of bounds or misaligned.
    OutOfBounds,
    /// The simulated power cut happened.
    PowerCut,
    /// A write tried to set a bit an earlier write cleared.
    NotErased,
}

impl embedded_storage::nor_flash::NorFlashError for RamFlashError {
    fn kind(&self) -> embedded_storage::nor_flash::NorFlashErrorKind {
        use embedded_storage::nor_flash::NorFlashErrorKind;
        match self {
            Self::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            Self::PowerCut | Self::NotErased => NorFlashErrorKind::Other,
        }
    }
}

impl<const SIZE: usize> embedded_storage::nor_flash::ErrorType for RamFlash<SIZE> {
    type Error = RamFlashError;
}

impl<const SIZE: usize> ReadNorFlash for RamFlash<SIZE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let start = offset as usize;
        let src = self
            .bytes
            .get(start..start + bytes.len())
            .ok_or(RamFlashError::OutOfBounds)?;
        bytes.copy_from_slice(src);
        Ok(())
    }

    fn capacity(&self) -> usize {
        SIZE
    }
}

impl<const SIZE: usize> NorFlash for RamFlash<SIZE> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 256;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let range = self
            .bytes
            .get_mut(from as usize..to as usize)
            .ok_or(RamFlashError::OutOfBounds)?;
        range.fill(0xff);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let start = offset as usize;
        if start & 3 != 0 || bytes.len() & 3 != 0 || start + bytes.len() > SIZE {
            return Err(RamFlashError::OutOfBounds);
        }
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(left) = self.cut_after.as_mut() {
                if *left == 0 {
                    return Err(RamFlashError::PowerCut);
                }
                *left -= 1;
            }
            let cell = &mut self.bytes[start + i];
            if b & !*cell != 0 {
                return Err(RamFlashError::NotErased);
            }
            *cell &= b;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Log = FlashLog<RamFlash<4096>, 32, 16>;

    fn entry(index: Index, term: Term, data: &[u8]) -> Entry<'_> {
        Entry {
            index,
            term,
            kind: EntryKind::Command,
            data,
        }
    }

    fn entries(log: &Log) -> std::vec::Vec<(Index, Term, std::vec::Vec<u8>)> {
        (log.first_index()..=log.last_index())
            .map(|i| {
                let e = log.entry(i).unwrap();
                (e.index, e.term, e.data.to_vec())
            })
            .collect()
    }

    extern crate std;

    #[test]
    fn what_was_synced_survives_and_what_was_not_is_gone() {
        let mut log = Log::open(RamFlash::new()).unwrap();
        log.set_hard_state(HardState {
            current_term: 2,
            voted_for: Some(3),
        })
        .unwrap();
        log.append(&entry(1, 1, b"a")).unwrap();
        log.append(&entry(2, 2, b"bb")).unwrap();
        log.append(&entry(3, 2, b"ccc")).unwrap();
        log.truncate_suffix(3).unwrap();
        log.append(&entry(3, 2, b"d")).unwrap();
        log.sync().unwrap();
        log.append(&entry(4, 2, b"never synced")).unwrap();
        let log = Log::open(log.into_flash()).unwrap();
        assert_eq!(
            log.hard_state(),
            HardState {
                current_term: 2,
                voted_for: Some(3)
            }
        );
        assert_eq!(
            entries(&log),
            [
                (1, 1, b"a".to_vec()),
                (2, 2, b"bb".to_vec()),
                (3, 2, b"d".to_vec())
            ]
        );
    }

    #[test]
    fn a_torn_write_at_every_byte_keeps_every_earlier_sync() {
        for cut in 0..200 {
            let mut log = Log::open(RamFlash::new()).unwrap();
            log.append(&entry(1, 1, b"first")).unwrap();
            log.sync().unwrap();
            let mut flash = log.into_flash();
            flash.cut_after = Some(cut);
            let mut log = Log::open(flash).unwrap();
            let _ = log.set_hard_state(HardState {
                current_term: 5,
                voted_for: None,
            });
            let _ = log.append(&entry(2, 5, b"second"));
            let synced = log.sync().is_ok();
            let mut flash = log.into_flash();
            flash.cut_after = None;
            let mut log = Log::open(flash).unwrap();
            assert_eq!(log.entry(1).unwrap().data, b"first", "cut {cut}");
            if synced {
                assert_eq!(log.entry(2).unwrap().data, b"second");
                assert_eq!(log.hard_state().current_term, 5);
            }
            // The journal goes on after a torn tail.
            let next = log.last_index() + 1;
            log.append(&entry(next, 6, b"after")).unwrap();
            log.sync().unwrap();
            let log = Log::open(log.into_flash()).unwrap();
            assert_eq!(log.entry(next).unwrap().data, b"after", "cut {cut}");
        }
    }

    #[test]
    fn a_full_flash_fails_the_sync_and_keeps_what_was_synced() {
        let mut log: FlashLog<RamFlash<128>, 32, 16> = FlashLog::open(RamFlash::new()).unwrap();
        let mut failed = false;
        for i in 1..=10 {
            log.append(&entry(i, 1, b"0123456789")).unwrap();
            if log.sync().is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        let kept = FlashLog::<_, 32, 16>::open(log.into_flash()).unwrap();
        assert!(kept.last_index() >= 1);
    }

    #[test]
    fn garbage_flash_opens_without_panicking() {
        let mut flash = RamFlash::<512>::new();
        let mut x: u32 = 12345;
        for b in flash.bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let _ = FlashLog::<_, 4, 4>::open(flash.clone());
        let _ = MarkStore::open(flash);
    }

    #[test]
    fn marks_survive_and_wrap() {
        let mut store = MarkStore::open(RamFlash::<64>::new()).unwrap();
        assert_eq!(store.mark(), None);
        for mark in 1..20u64 {
            store.store(mark * 100).unwrap();
            let reopened = MarkStore::open(store.into_flash()).unwrap();
            assert_eq!(reopened.mark(), Some(mark * 100));
            store = reopened;
        }
    }
}
