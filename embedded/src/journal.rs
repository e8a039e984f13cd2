//! A Raft log that survives a reboot, on any `embedded-storage` NorFlash:
//! [`FlashLog`] keeps the log in RAM (the core's [`ArrayLog`]) and journals
//! every change (hard state, appended entry, truncated suffix) as a record
//! in flash, with a snapshot of the state machine that lets it compact; on boot [`FlashLog::open`] replays the journal. [`MarkStore`]
//! keeps the UDP link's send-counter mark the same way.
//!
//! Writes are gathered in RAM and written to flash by [`Durable::sync`],
//! which the node asks for before it acknowledges entries or grants a vote:
//! one flash write for many changes (group commit). A board that reboots
//! keeps its term, its vote and every entry it acknowledged.
//!
//! # Record format
//!
//! The flash is split in two banks (halves, in whole erase units). The
//! journal lives in one of them; records are 4-byte aligned, from the
//! bank's start:
//!
//! ```text
//! offset  size  field
//!      0     2  payload length, little-endian
//!      2     1  kind (1 hard state, 2 entry, 3 truncate, 4 counter mark,
//!               5 bank header, 6 snapshot metadata, 7 snapshot bytes,
//!               8 log start)
//!      3     1  0
//!      4     4  CRC-32 (IEEE) of bytes 0..4 and of the payload
//!      8     n  payload (integers little-endian), then 0xff up to 4-byte alignment
//! ```
//!
//! An erased header (`ff ff ff ff`) ends the journal. A header that does
//! not check (a write torn by a power cut) is skipped word by word, so a
//! torn tail loses only the records that were never synced.
//!
//! # Snapshots and compaction: two banks
//!
//! The host keeps a snapshot of its state machine with
//! [`FlashLog::save_snapshot`] (in RAM) and compacts the log
//! (`Node::compact`). Compaction, a snapshot installed from a leader, and a
//! bank that fills up all do the same thing: the live state (snapshot
//! metadata and bytes, the log start, the hard state, the entries kept) is
//! written into the other bank after its 16-byte header slot, then the
//! header (kind 5, a generation one higher) is written at its start, then
//! the old bank is erased. At open the bank with the highest valid header
//! is the journal (bank 0 if neither has one: a journal never rewritten).
//!
//! Crash safety: until the header's CRC checks, the new bank is not the
//! journal and the old one is intact (it is only erased after the header
//! is written). Once the header checks, every record before it in the new
//! bank was written earlier, so the new bank is complete; a half-erased
//! old bank cannot outrank it (lower generation, and a torn header fails
//! its CRC), and the next rewrite erases it before using it. Each step is
//! tested on [`RamFlash`] with a power cut at every byte and erase page.
//!
//! A flash with slow erases (a real board's large sectors) calls
//! [`FlashLog::set_rewrite_above`]: compaction and installs then append the
//! snapshot (metadata, bytes, then the log's new start) to the active bank
//! and rewrite only once it holds more than that. Replay stages a snapshot
//! until its last byte, so one torn mid-way leaves the previous one, and
//! the new log start is written after it, so the log never starts past
//! the snapshot that covers it.
//!
//! When even the live state does not fit a bank, [`Durable::sync`] fails
//! with [`StorageError::Full`] and the node stops acknowledging (it never
//! loses what it acknowledged): compact (snapshot) more often.
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

use coracle::{
    ArrayLog, Entry, EntryKind, HardState, Index, LogStorage, SnapshotMeta, StorageError, Term,
};
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
const KIND_BANK: u8 = 5;
const KIND_SNAP_META: u8 = 6;
const KIND_SNAP_DATA: u8 = 7;
const KIND_BASE: u8 = 8;
/// Bytes of a bank header record (an 8-byte generation).
const BANK_HEADER: usize = HEADER + 8;

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
    /// The flash is too small for two banks of at least one erase unit.
    TooSmall,
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Alignment => "flash read/write unit does not divide 4 bytes",
            Self::Flash => "flash failed",
            Self::LogTooSmall => "journal holds more than the RAM log can",
            Self::TooSmall => "flash too small for two journal banks",
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
/// the end of the journal (or at `limit`), `Some(Err)` for a word that is
/// not a valid record.
fn read_record<F: ReadNorFlash>(
    flash: &mut F,
    offset: usize,
    limit: usize,
    payload: &mut [u8; MAX_PAYLOAD],
) -> Option<Result<(u8, usize, usize), ()>> {
    let mut header = [0u8; HEADER];
    let limit = limit.min(flash.capacity());
    if offset + HEADER > limit || flash.read(offset as u32, &mut header).is_err() {
        return None;
    }
    if header[..4] == [0xff; 4] {
        return None;
    }
    let len = usize::from(u16::from_le_bytes([header[0], header[1]]));
    let total = HEADER + padded(len);
    if len > MAX_PAYLOAD || header[3] != 0 || offset + total > limit {
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

/// Called with a snapshot the log just installed from a leader (see
/// [`FlashLog::set_install_hook`]).
pub type InstallHook = fn(&SnapshotMeta, &[u8]);

/// A log of at most `CAP` entries of at most `DATA` bytes, in RAM, journaled
/// to the flash `F`, with a snapshot of at most `SNAP` bytes (see the
/// [module documentation](self)).
pub struct FlashLog<F: NorFlash, const CAP: usize, const DATA: usize, const SNAP: usize = 128> {
    flash: F,
    /// The entries; its index `i` is the log's index `base + i`.
    log: ArrayLog<CAP, DATA>,
    base: Index,
    /// Term of the entry at `first_index() - 1`.
    prev_term: Term,
    /// Bytes of one bank (half the flash, in whole erase units).
    bank_size: usize,
    /// The active bank (0 or 1) and its generation.
    bank: usize,
    generation: u64,
    /// The other bank may hold data (it is erased before it is written).
    other_dirty: bool,
    /// Flash offset of the next record.
    end: usize,
    /// Records not yet written to flash.
    pending: heapless::Vec<u8, PENDING>,
    /// Records replayed at open.
    replayed: usize,
    snapshot: Option<SnapshotMeta>,
    snapshot_data: heapless::Vec<u8, SNAP>,
    incoming: Option<SnapshotMeta>,
    incoming_data: heapless::Vec<u8, SNAP>,
    install_hook: Option<InstallHook>,
    rewrites: u64,
    /// Compaction rewrites the bank once it holds more than this; below,
    /// it appends the snapshot to the journal.
    rewrite_above: usize,
}

impl<F: NorFlash, const CAP: usize, const DATA: usize, const SNAP: usize> fmt::Debug
    for FlashLog<F, CAP, DATA, SNAP>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlashLog")
            .field("bank", &self.bank)
            .field("generation", &self.generation)
            .field("end", &self.end)
            .field("pending", &self.pending.len())
            .field("first_index", &self.first_index())
            .field("last_index", &self.last_index())
            .field("snapshot", &self.snapshot.map(|m| m.index))
            .finish_non_exhaustive()
    }
}

/// Encodes `meta` (without its configuration) as a record payload prefix.
fn meta_bytes(meta: &SnapshotMeta) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&meta.index.to_le_bytes());
    out[8..16].copy_from_slice(&meta.term.to_le_bytes());
    out[16..].copy_from_slice(&meta.size.to_le_bytes());
    out
}

/// The most configuration bytes a snapshot record holds.
const MAX_CONFIG: usize = MAX_PAYLOAD - 24;
/// Snapshot bytes in one data record (after its 8-byte offset).
const SNAP_CHUNK: usize = MAX_PAYLOAD - 8;

/// Appends a record to `buf`, writing `buf` to `flash` at `at` first if it
/// has no room (never past `limit`).
fn put<F: NorFlash, const P: usize>(
    flash: &mut F,
    buf: &mut heapless::Vec<u8, P>,
    at: &mut usize,
    limit: usize,
    kind: u8,
    parts: &[&[u8]],
) -> Result<(), StorageError> {
    if encode_record(buf, kind, parts) {
        return Ok(());
    }
    flush(flash, buf, at, limit)?;
    if encode_record(buf, kind, parts) {
        Ok(())
    } else {
        Err(StorageError::EntryTooLarge)
    }
}

/// Writes `buf` at `at` (not past `limit`) and empties it.
fn flush<F: NorFlash, const P: usize>(
    flash: &mut F,
    buf: &mut heapless::Vec<u8, P>,
    at: &mut usize,
    limit: usize,
) -> Result<(), StorageError> {
    if buf.is_empty() {
        return Ok(());
    }
    if *at + buf.len() > limit {
        return Err(StorageError::Full);
    }
    flash
        .write(*at as u32, buf)
        .map_err(|_| StorageError::Unavailable)?;
    *at += buf.len();
    buf.clear();
    Ok(())
}

fn entry_kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Command => 0,
        EntryKind::Noop => 1,
        EntryKind::Membership => 2,
    }
}

impl<F: NorFlash, const CAP: usize, const DATA: usize, const SNAP: usize>
    FlashLog<F, CAP, DATA, SNAP>
{
    /// Replays the journal in `flash` (an erased flash is an empty log):
    /// the bank with the newest valid bank header, or bank 0 if none has
    /// one.
    ///
    /// # Errors
    /// See [`JournalError`].
    pub fn open(mut flash: F) -> Result<Self, JournalError> {
        check_alignment::<F>()?;
        let erase = F::ERASE_SIZE.max(1);
        let bank_size = flash.capacity() / 2 / erase * erase;
        if bank_size < 2 * BANK_HEADER {
            return Err(JournalError::TooSmall);
        }
        let mut payload = [0u8; MAX_PAYLOAD];
        let mut generation_of = |bank: usize| -> Option<u64> {
            let start = bank * bank_size;
            match read_record(&mut flash, start, start + bank_size, &mut payload) {
                Some(Ok((KIND_BANK, 8, BANK_HEADER))) => Some(le_u64(&payload, 0)),
                _ => None,
            }
        };
        let (bank, generation) = match (generation_of(0), generation_of(1)) {
            (Some(a), Some(b)) if b > a => (1, b),
            (None, Some(b)) => (1, b),
            (Some(a), _) => (0, a),
            (None, None) => (0, 0),
        };
        let mut this = Self {
            flash,
            log: ArrayLog::new(),
            base: 0,
            prev_term: 0,
            bank_size,
            bank,
            generation,
            other_dirty: true,
            end: 0,
            pending: heapless::Vec::new(),
            replayed: 0,
            snapshot: None,
            snapshot_data: heapless::Vec::new(),
            incoming: None,
            incoming_data: heapless::Vec::new(),
            install_hook: None,
            rewrites: 0,
            rewrite_above: 0,
        };
        this.replay()?;
        Ok(this)
    }

    fn replay(&mut self) -> Result<(), JournalError> {
        let mut payload = [0u8; MAX_PAYLOAD];
        let limit = (self.bank + 1) * self.bank_size;
        let mut offset = self.bank * self.bank_size;
        while let Some(record) = read_record(&mut self.flash, offset, limit, &mut payload) {
            let Ok((kind, len, total)) = record else {
                offset += 4;
                continue;
            };
            offset += total;
            self.replayed += 1;
            let p = &payload[..len];
            let too_small = |_| JournalError::LogTooSmall;
            match kind {
                KIND_HARD_STATE if len == 17 => {
                    let voted_for = (p[8] != 0).then(|| le_u64(p, 9));
                    let hs = HardState {
                        current_term: le_u64(p, 0),
                        voted_for,
                    };
                    self.log.set_hard_state(hs).map_err(too_small)?;
                }
                KIND_ENTRY if len >= 17 => {
                    let index = le_u64(p, 0);
                    if index <= self.base {
                        continue;
                    }
                    let kind = match p[16] {
                        0 => EntryKind::Command,
                        1 => EntryKind::Noop,
                        _ => EntryKind::Membership,
                    };
                    let local = index - self.base;
                    if local <= self.log.last_index() && local >= self.log.first_index() {
                        self.log.truncate_suffix(local).map_err(too_small)?;
                    }
                    let entry = Entry {
                        index: local,
                        term: le_u64(p, 8),
                        kind,
                        data: &p[17..],
                    };
                    self.log.append(&entry).map_err(too_small)?;
                }
                KIND_TRUNCATE if len == 8 => {
                    let from = le_u64(p, 0);
                    if from > self.base && from - self.base <= self.log.last_index() {
                        self.log
                            .truncate_suffix(from - self.base)
                            .map_err(too_small)?;
                    }
                }
                // A snapshot is staged until its last byte is replayed: one
                // torn before that leaves the previous one in place.
                KIND_SNAP_META if len >= 24 => {
                    self.incoming =
                        SnapshotMeta::new(le_u64(p, 0), le_u64(p, 8), le_u64(p, 16), &p[24..]);
                    self.incoming_data.clear();
                }
                KIND_SNAP_DATA
                    if len >= 8
                        && self.incoming.is_some()
                        && le_u64(p, 0) == self.incoming_data.len() as u64 =>
                {
                    self.incoming_data
                        .extend_from_slice(&p[8..])
                        .map_err(|_| JournalError::LogTooSmall)?;
                }
                KIND_BASE if len == 16 => self.restart_after(le_u64(p, 0), le_u64(p, 8)),
                // Bank headers were read; counter marks live in a
                // MarkStore; unknown kinds are skipped.
                _ => {}
            }
            if self
                .incoming
                .is_some_and(|m| m.size == self.incoming_data.len() as u64)
            {
                self.snapshot = self.incoming.take();
                core::mem::swap(&mut self.snapshot_data, &mut self.incoming_data);
            }
        }
        self.incoming = None;
        self.incoming_data.clear();
        self.end = offset;
        Ok(())
    }

    /// The log restarts after `index` of `term`: the entries through it go,
    /// and those after it stay if the log holds `index` with `term`;
    /// otherwise every entry goes (a snapshot from a leader replaced them).
    fn restart_after(&mut self, index: Index, term: Term) {
        let first = self.first_index();
        if index + 1 >= first && index <= self.last_index() && self.term(index) == Some(term) {
            if index >= first {
                let _ = self.log.compact(index - self.base);
            }
        } else {
            let inner_first = self.log.first_index();
            let _ = self.log.truncate_suffix(inner_first);
            self.base = index + 1 - inner_first;
        }
        self.prev_term = term;
    }

    /// Journals the kept snapshot and the log's new start, and makes them
    /// durable: appended to the bank, or by a rewrite of the live state
    /// into the other bank once this one holds more than
    /// [`FlashLog::set_rewrite_above`] bytes.
    fn journal_snapshot(&mut self) -> Result<(), StorageError> {
        if self.used() + self.pending.len() >= self.rewrite_above {
            return self.rewrite();
        }
        if let Some(meta) = self.snapshot {
            self.record(KIND_SNAP_META, &[&meta_bytes(&meta), meta.config()])?;
            let mut offset = 0;
            while offset < self.snapshot_data.len() {
                let end = (offset + SNAP_CHUNK).min(self.snapshot_data.len());
                let mut chunk = [0u8; SNAP_CHUNK];
                chunk[..end - offset].copy_from_slice(&self.snapshot_data[offset..end]);
                let at = (offset as u64).to_le_bytes();
                self.record(KIND_SNAP_DATA, &[&at, &chunk[..end - offset]])?;
                offset = end;
            }
        }
        let start = self.first_index() - 1;
        self.record(
            KIND_BASE,
            &[&start.to_le_bytes(), &self.prev_term.to_le_bytes()],
        )?;
        self.write_pending()
    }

    /// Compaction and snapshot installs rewrite the journal into the other
    /// bank only once the active bank holds more than `bytes` (0, the
    /// default: at every one); below that they append the snapshot to the
    /// journal. A flash whose erase is slow (a real board's large sectors)
    /// sets about half a bank, so it erases once per many compactions.
    pub fn set_rewrite_above(&mut self, bytes: usize) {
        self.rewrite_above = bytes;
    }

    /// Records replayed when the journal was opened.
    #[must_use]
    pub const fn replayed(&self) -> usize {
        self.replayed
    }

    /// Bytes of the active bank the journal uses (synced records).
    #[must_use]
    pub const fn used(&self) -> usize {
        self.end - self.bank * self.bank_size
    }

    /// Bytes of one bank: the most the journal holds before it is
    /// rewritten into the other bank.
    #[must_use]
    pub const fn bank_size(&self) -> usize {
        self.bank_size
    }

    /// The active bank (0 or 1) and its generation (one more at each
    /// rewrite).
    #[must_use]
    pub const fn bank(&self) -> (usize, u64) {
        (self.bank, self.generation)
    }

    /// Times the live state was rewritten into the other bank since open.
    #[must_use]
    pub const fn rewrites(&self) -> u64 {
        self.rewrites
    }

    /// The snapshot kept, with its bytes.
    #[must_use]
    pub fn snapshot(&self) -> Option<(&SnapshotMeta, &[u8])> {
        self.snapshot.as_ref().map(|m| (m, &self.snapshot_data[..]))
    }

    /// Keeps `data` as the snapshot `meta` describes (built with
    /// `Node::snapshot_meta_at` at an applied index). It is in RAM only
    /// until the log is compacted (`Node::compact`), which writes it to
    /// flash with the rest of the live state.
    ///
    /// # Errors
    /// [`StorageError::EntryTooLarge`] if `data` is larger than `SNAP`
    /// bytes or the configuration too large for a record,
    /// [`StorageError::OutOfRange`] if `data` is not `meta.size` bytes or
    /// `meta` is older than the snapshot kept.
    pub fn save_snapshot(&mut self, meta: SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        Self::check_meta(&meta)?;
        if data.len() as u64 != meta.size || self.snapshot.is_some_and(|m| m.index > meta.index) {
            return Err(StorageError::OutOfRange);
        }
        self.snapshot_data =
            heapless::Vec::from_slice(data).map_err(|_| StorageError::EntryTooLarge)?;
        self.snapshot = Some(meta);
        Ok(())
    }

    fn check_meta(meta: &SnapshotMeta) -> Result<(), StorageError> {
        if meta.size > SNAP as u64 || meta.config().len() > MAX_CONFIG {
            Err(StorageError::EntryTooLarge)
        } else {
            Ok(())
        }
    }

    /// `hook` is called with every snapshot installed from a leader, as it
    /// is installed: a host whose state machine cannot reach the log when
    /// `Output::RestoreSnapshot` arrives keeps a copy there.
    pub fn set_install_hook(&mut self, hook: InstallHook) {
        self.install_hook = Some(hook);
    }

    /// The flash back (to reopen it, as after a reboot).
    pub fn into_flash(self) -> F {
        self.flash
    }

    fn write_pending(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let limit = (self.bank + 1) * self.bank_size;
        if self.end + self.pending.len() > limit {
            // The bank is full: the live state (which includes what is
            // pending) goes to the other bank, without the records it
            // superseded.
            return self.rewrite();
        }
        flush(&mut self.flash, &mut self.pending, &mut self.end, limit)
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

    /// Writes the live state (snapshot, log start, hard state, entries)
    /// into the other bank, then its bank header, then erases this bank.
    /// Until the header is written the old bank is the journal; after, the
    /// new one is (its generation is higher). Everything in RAM, pending
    /// records included, is durable when it returns `Ok`.
    fn rewrite(&mut self) -> Result<(), StorageError> {
        let target = 1 - self.bank;
        let start = target * self.bank_size;
        let limit = start + self.bank_size;
        let to_u32 = |x: usize| x as u32;
        if self.other_dirty {
            self.flash
                .erase(to_u32(start), to_u32(limit))
                .map_err(|_| StorageError::Unavailable)?;
            self.other_dirty = false;
        }
        self.other_dirty = true;
        self.pending.clear();
        let (flash, buf) = (&mut self.flash, &mut self.pending);
        let mut at = start + BANK_HEADER;
        if let Some(meta) = &self.snapshot {
            put(
                flash,
                buf,
                &mut at,
                limit,
                KIND_SNAP_META,
                &[&meta_bytes(meta), meta.config()],
            )?;
            for (i, chunk) in self.snapshot_data.chunks(SNAP_CHUNK).enumerate() {
                let offset = ((i * SNAP_CHUNK) as u64).to_le_bytes();
                put(
                    flash,
                    buf,
                    &mut at,
                    limit,
                    KIND_SNAP_DATA,
                    &[&offset, chunk],
                )?;
            }
        }
        let first = self.base + self.log.first_index();
        put(
            flash,
            buf,
            &mut at,
            limit,
            KIND_BASE,
            &[&(first - 1).to_le_bytes(), &self.prev_term.to_le_bytes()],
        )?;
        let hs = self.log.hard_state();
        put(
            flash,
            buf,
            &mut at,
            limit,
            KIND_HARD_STATE,
            &hard_state_parts(&hs).as_parts(),
        )?;
        for local in self.log.first_index()..=self.log.last_index() {
            let Some(e) = self.log.entry(local) else {
                continue;
            };
            let index = (self.base + local).to_le_bytes();
            put(
                flash,
                buf,
                &mut at,
                limit,
                KIND_ENTRY,
                &[
                    &index,
                    &e.term.to_le_bytes(),
                    &[entry_kind_byte(e.kind)],
                    e.data,
                ],
            )?;
        }
        flush(flash, buf, &mut at, limit)?;
        // The commit point: the new bank's header.
        let generation = self.generation + 1;
        let mut header: heapless::Vec<u8, BANK_HEADER> = heapless::Vec::new();
        encode_record(&mut header, KIND_BANK, &[&generation.to_le_bytes()]);
        self.flash
            .write(to_u32(start), &header)
            .map_err(|_| StorageError::Unavailable)?;
        let old = self.bank * self.bank_size;
        self.bank = target;
        self.generation = generation;
        self.end = at;
        self.rewrites += 1;
        // The old bank is no longer the journal: erase it for the next
        // rewrite (if this fails, the next rewrite erases it first).
        if self
            .flash
            .erase(to_u32(old), to_u32(old + self.bank_size))
            .is_ok()
        {
            self.other_dirty = false;
        }
        Ok(())
    }
}

/// The payload of a hard state record.
struct HardStateBytes {
    term: [u8; 8],
    voted: [u8; 1],
    vote: [u8; 8],
}

impl HardStateBytes {
    fn as_parts(&self) -> [&[u8]; 3] {
        [&self.term, &self.voted, &self.vote]
    }
}

fn hard_state_parts(hs: &HardState) -> HardStateBytes {
    HardStateBytes {
        term: hs.current_term.to_le_bytes(),
        voted: [u8::from(hs.voted_for.is_some())],
        vote: hs.voted_for.unwrap_or(0).to_le_bytes(),
    }
}

impl<F: NorFlash, const CAP: usize, const DATA: usize, const SNAP: usize> LogStorage
    for FlashLog<F, CAP, DATA, SNAP>
{
    fn hard_state(&self) -> HardState {
        self.log.hard_state()
    }

    fn set_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.record(KIND_HARD_STATE, &hard_state_parts(&hs).as_parts())?;
        self.log.set_hard_state(hs)
    }

    fn first_index(&self) -> Index {
        self.base + self.log.first_index()
    }

    fn last_index(&self) -> Index {
        self.base + self.log.last_index()
    }

    fn term(&self, index: Index) -> Option<Term> {
        let first = self.first_index();
        if index + 1 == first {
            Some(self.prev_term)
        } else if index < first {
            None
        } else {
            self.log.term(index - self.base)
        }
    }

    fn entry(&self, index: Index) -> Option<Entry<'_>> {
        if index < self.first_index() {
            return None;
        }
        self.log
            .entry(index - self.base)
            .map(|e| Entry { index, ..e })
    }

    fn append(&mut self, entry: &Entry<'_>) -> Result<(), StorageError> {
        if entry.index != self.last_index() + 1 {
            return Err(StorageError::OutOfRange);
        }
        // The RAM log checks room and size first: nothing is journaled
        // that the log refused.
        let local = entry.index - self.base;
        self.log.append(&Entry {
            index: local,
            ..*entry
        })?;
        let result = self.record(
            KIND_ENTRY,
            &[
                &entry.index.to_le_bytes(),
                &entry.term.to_le_bytes(),
                &[entry_kind_byte(entry.kind)],
                entry.data,
            ],
        );
        if result.is_err() {
            let _ = self.log.truncate_suffix(local);
        }
        result
    }

    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        if from < self.first_index() {
            return Err(StorageError::Compacted);
        }
        self.record(KIND_TRUNCATE, &[&from.to_le_bytes()])?;
        self.log.truncate_suffix(from - self.base)
    }

    /// Drops the entries through `through`, which the kept snapshot must
    /// cover ([`FlashLog::save_snapshot`] first), and rewrites the live
    /// state into the other bank. If the rewrite fails, the entries are
    /// gone from RAM but the flash still holds them with the older state
    /// (equivalent; the next rewrite retries).
    fn compact(&mut self, through: Index) -> Result<(), StorageError> {
        if through < self.first_index() {
            return Ok(());
        }
        if self.snapshot.is_none_or(|m| m.index < through) {
            return Err(StorageError::Unavailable);
        }
        let term = self.term(through).ok_or(StorageError::OutOfRange)?;
        self.log.compact(through - self.base)?;
        self.prev_term = term;
        self.journal_snapshot()
    }

    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.snapshot
    }

    fn snapshot_chunk(&self, offset: u64, max: usize) -> Result<&[u8], StorageError> {
        if self.snapshot.is_none() {
            return Err(StorageError::Unavailable);
        }
        Ok(coracle::snapshot_chunk_of(&self.snapshot_data, offset, max))
    }

    fn receive_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        Self::check_meta(meta)?;
        if offset == 0 {
            self.incoming = Some(*meta);
            self.incoming_data.clear();
        }
        if self.incoming.as_ref() != Some(meta) || self.incoming_data.len() as u64 != offset {
            return Err(StorageError::OutOfRange);
        }
        self.incoming_data
            .extend_from_slice(data)
            .map_err(|_| StorageError::EntryTooLarge)
    }

    /// Makes the received snapshot the kept one, restarts the log after it
    /// (keeping the entries after it if the log holds its index and term),
    /// and rewrites the live state into the other bank: durable when it
    /// returns.
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        if self.incoming.as_ref() != Some(meta)
            || self.incoming_data.len() as u64 != meta.size
            || meta.index + 1 < self.first_index()
        {
            return Err(StorageError::OutOfRange);
        }
        self.restart_after(meta.index, meta.term);
        self.snapshot = self.incoming.take();
        core::mem::swap(&mut self.snapshot_data, &mut self.incoming_data);
        self.incoming_data.clear();
        if let Some(hook) = self.install_hook {
            hook(meta, &self.snapshot_data);
        }
        self.journal_snapshot()
    }
}

impl<F: NorFlash, const CAP: usize, const DATA: usize, const SNAP: usize> Durable
    for FlashLog<F, CAP, DATA, SNAP>
{
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
        let limit = flash.capacity();
        while let Some(record) = read_record(&mut flash, offset, limit, &mut payload) {
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

    /// Erases page by page; with [`RamFlash::cut_after`] each page counts
    /// as one byte, so a power cut can leave a range half erased.
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let (from, to) = (from as usize, to as usize);
        if from > to || to > SIZE {
            return Err(RamFlashError::OutOfBounds);
        }
        for page in (from..to).step_by(Self::ERASE_SIZE) {
            if let Some(left) = self.cut_after.as_mut() {
                if *left == 0 {
                    return Err(RamFlashError::PowerCut);
                }
                *left -= 1;
            }
            self.bytes[page..to.min(page + Self::ERASE_SIZE)].fill(0xff);
        }
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
        let mut log: FlashLog<RamFlash<512>, 32, 16> = FlashLog::open(RamFlash::new()).unwrap();
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

    fn meta(index: Index, term: Term, data: &[u8]) -> SnapshotMeta {
        SnapshotMeta::new(index, term, data.len() as u64, b"cfg").unwrap()
    }

    /// Appends `n` entries after the last (term 1, data = the index byte)
    /// and syncs.
    fn grow(log: &mut Log, n: u64) {
        for _ in 0..n {
            let i = log.last_index() + 1;
            log.append(&entry(i, 1, &[i as u8; 3])).unwrap();
        }
        log.sync().unwrap();
    }

    /// `(first, last, snapshot index, hard state term)` and every entry.
    type State = (
        Index,
        Index,
        Option<Index>,
        Term,
        std::vec::Vec<(Index, Term, std::vec::Vec<u8>)>,
    );

    fn state(log: &Log) -> State {
        (
            log.first_index(),
            log.last_index(),
            log.snapshot_meta().map(|m| m.index),
            log.hard_state().current_term,
            entries(log),
        )
    }

    #[test]
    fn compaction_rewrites_the_live_state_into_the_other_bank() {
        let mut log = Log::open(RamFlash::new()).unwrap();
        assert_eq!(log.bank(), (0, 0));
        log.set_hard_state(HardState {
            current_term: 4,
            voted_for: Some(1),
        })
        .unwrap();
        grow(&mut log, 10);
        // Refused without a snapshot that covers it.
        assert_eq!(log.compact(6), Err(StorageError::Unavailable));
        log.save_snapshot(meta(6, 1, b"six"), b"six").unwrap();
        log.compact(6).unwrap();
        assert_eq!(log.bank(), (1, 1));
        assert_eq!(
            (log.first_index(), log.term(6), log.term(5)),
            (7, Some(1), None)
        );
        let used = log.used();
        assert!(used < 400, "only the live state: {used} bytes");
        // The old bank is erased.
        assert!(log.flash.bytes()[..2048].iter().all(|&b| b == 0xff));
        let before = state(&log);
        let mut log = Log::open(log.into_flash()).unwrap();
        assert_eq!(state(&log), before);
        assert_eq!(log.snapshot().unwrap().1, b"six");
        assert_eq!(log.snapshot().unwrap().0.config(), b"cfg");
        assert_eq!(log.hard_state().voted_for, Some(1));
        assert_eq!(log.snapshot_chunk(1, 1).unwrap(), b"i");
        // Round and round the banks.
        for round in 0..5u64 {
            grow(&mut log, 7);
            let at = log.last_index() - 2;
            log.save_snapshot(meta(at, 1, b"later"), b"later").unwrap();
            log.compact(at).unwrap();
            assert_eq!(log.bank(), ((round as usize) % 2, round + 2));
            let before = state(&log);
            log = Log::open(log.into_flash()).unwrap();
            assert_eq!(state(&log), before, "round {round}");
            assert_eq!(log.first_index(), at + 1);
        }
    }

    /// Compacts through 15 with a power cut after `cut` bytes (or erase
    /// pages); returns whether the compaction completed without a cut.
    fn compaction_with_a_power_cut(
        rewrite_above: usize,
        cut: usize,
        counts: &mut [usize; 3],
    ) -> bool {
        let mut log = Log::open(RamFlash::new()).unwrap();
        log.set_rewrite_above(rewrite_above);
        grow(&mut log, 12);
        log.save_snapshot(meta(5, 1, b"five"), b"five").unwrap();
        log.compact(5).unwrap();
        grow(&mut log, 6);
        let flash = log.into_flash();
        let old = state(&Log::open(flash.clone()).unwrap());
        let mut f = flash;
        f.cut_after = Some(cut);
        let mut log = Log::open(f).unwrap();
        log.set_rewrite_above(rewrite_above);
        // An unsynced entry rides along: it may or may not survive.
        log.append(&entry(19, 2, b"new")).unwrap();
        log.save_snapshot(meta(15, 1, b"fifteen"), b"fifteen")
            .unwrap();
        let done = log.compact(15).is_ok();
        let new = state(&log);
        let mut f = log.into_flash();
        let was_cut = f.cut_after == Some(0);
        f.cut_after = None;
        let mut log = Log::open(f).unwrap();
        log.set_rewrite_above(rewrite_above);
        let got = state(&log);
        if done {
            assert_eq!(got, new, "cut {cut}: the compaction returned Ok");
            counts[2] += usize::from(was_cut);
        } else if got == old {
            counts[0] += 1;
        } else if got != new {
            // Appended in place, a cut can also land between the snapshot
            // and the log's new start: the old entries, the new snapshot.
            assert!(rewrite_above > 0, "cut {cut}: {got:?}");
            let (first, last, snapshot, term, entries) = &got;
            assert_eq!((*first, *term), (old.0, old.3), "cut {cut}");
            assert!(*last == 18 || *last == 19, "cut {cut}: {got:?}");
            assert!(
                snapshot == &old.2 || snapshot == &Some(15),
                "cut {cut}: {got:?}"
            );
            assert_eq!(entries[..old.4.len()], old.4[..], "cut {cut}");
            counts[1] += 1;
        }
        // The snapshot always covers what the log compacted away.
        assert!(got.2.unwrap_or(0) + 1 >= got.0, "cut {cut}: {got:?}");
        // The journal goes on from any of them.
        let next = log.last_index() + 1;
        log.append(&entry(next, 3, b"on")).unwrap();
        log.sync().unwrap();
        let at = log.last_index();
        log.save_snapshot(meta(at, 3, b"x"), b"x").unwrap();
        log.compact(at).unwrap();
        let log = Log::open(log.into_flash()).unwrap();
        assert_eq!(
            (log.first_index(), log.snapshot_meta().unwrap().index),
            (at + 1, at),
            "cut {cut}"
        );
        done && !was_cut
    }

    #[test]
    fn a_power_cut_at_every_write_of_a_compaction_keeps_the_old_or_the_new_state() {
        // [kept the old state, in between (appended), cut after the commit point]
        let mut counts = [0; 3];
        let cut = (0..3000)
            .find(|&cut| compaction_with_a_power_cut(0, cut, &mut counts))
            .expect("completes");
        // Cuts before the new bank's header keep the old state; cuts in
        // the erase of the old bank (after it) already have the new one.
        assert!(counts[0] > 100 && counts[2] > 0, "{counts:?} in {cut} cuts");
    }

    #[test]
    fn a_power_cut_at_every_write_of_an_appended_compaction_keeps_a_covered_log() {
        let mut counts = [0; 3];
        let cut = (0..3000)
            .find(|&cut| compaction_with_a_power_cut(1024, cut, &mut counts))
            .expect("completes");
        assert!(counts[0] > 10 && counts[1] > 0, "{counts:?} in {cut} cuts");
    }

    #[test]
    fn appended_compactions_rewrite_the_bank_only_when_it_is_half_full() {
        let mut log = Log::open(RamFlash::new()).unwrap();
        log.set_rewrite_above(1024);
        let mut compactions = 0;
        for round in 0..60u64 {
            grow(&mut log, 5);
            let at = log.last_index() - 1;
            log.save_snapshot(meta(at, 1, &[round as u8; 40]), &[round as u8; 40])
                .unwrap();
            log.compact(at).unwrap();
            compactions += 1;
            let before = state(&log);
            log = Log::open(log.into_flash()).unwrap();
            log.set_rewrite_above(1024);
            assert_eq!(state(&log), before, "round {round}");
            assert_eq!(log.snapshot().unwrap().1, &[round as u8; 40][..]);
            assert!(log.used() <= 1024 + 400, "round {round}: {}", log.used());
        }
        let generation = log.bank().1;
        assert!(
            generation > 2 && generation * 4 < compactions,
            "{generation} rewrites for {compactions}"
        );
    }

    #[test]
    fn a_full_bank_is_rewritten_and_a_power_cut_there_loses_nothing_synced() {
        // 512-byte banks; every sync rewrites old hard states away.
        type Small = FlashLog<RamFlash<1024>, 8, 4>;
        let mut log = Small::open(RamFlash::new()).unwrap();
        for term in 1..=100u64 {
            log.set_hard_state(HardState {
                current_term: term,
                voted_for: Some(term % 3),
            })
            .unwrap();
            log.sync().unwrap();
        }
        assert!(log.rewrites() > 0);
        for i in 1..=3 {
            log.append(&entry(i, 100, b"abcd")).unwrap();
        }
        log.sync().unwrap();
        let flash = log.into_flash();
        let mut rewrote = false;
        let mut cuts_in_rewrite = 0;
        for cut in 0..3000 {
            let mut f = flash.clone();
            f.cut_after = Some(cut);
            let mut log = Small::open(f).unwrap();
            let before = log.bank();
            let mut synced = 100;
            for term in 101..=140u64 {
                let hs = HardState {
                    current_term: term,
                    voted_for: None,
                };
                if log.set_hard_state(hs).is_err() || log.sync().is_err() {
                    break;
                }
                synced = term;
            }
            if log.bank() == before && synced < 140 && log.used() + 64 > log.bank_size() {
                cuts_in_rewrite += 1;
            }
            rewrote |= log.bank() != before;
            let mut f = log.into_flash();
            f.cut_after = None;
            let log = Small::open(f).unwrap();
            assert!(log.hard_state().current_term >= synced, "cut {cut}");
            assert_eq!(log.last_index(), 3, "cut {cut}");
            assert_eq!(log.entry(3).unwrap().data, b"abcd", "cut {cut}");
            if synced == 140 {
                break;
            }
        }
        assert!(rewrote);
        assert!(cuts_in_rewrite > 10, "{cuts_in_rewrite}");
    }

    #[test]
    fn an_installed_snapshot_is_durable_and_handed_to_the_hook() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static HOOKED: AtomicU64 = AtomicU64::new(0);
        fn hook(meta: &SnapshotMeta, data: &[u8]) {
            assert_eq!(data, b"0123456789");
            HOOKED.store(meta.index, Ordering::SeqCst);
        }
        for keep in [false, true] {
            let mut log = Log::open(RamFlash::new()).unwrap();
            log.set_install_hook(hook);
            grow(&mut log, 8);
            // Entry 6 has term 1: a snapshot at (6, 1) keeps 7 and 8; one at
            // (20, 5) replaces the whole log.
            let m = if keep {
                meta(6, 1, b"0123456789")
            } else {
                meta(20, 5, b"0123456789")
            };
            let mut big = meta(6, 1, b"0123456789");
            big.size = 1000;
            assert_eq!(
                log.receive_snapshot_chunk(&big, 0, b""),
                Err(StorageError::EntryTooLarge)
            );
            log.receive_snapshot_chunk(&m, 0, b"0123").unwrap();
            assert_eq!(
                log.receive_snapshot_chunk(&m, 7, b"x"),
                Err(StorageError::OutOfRange)
            );
            assert_eq!(log.install_snapshot(&m), Err(StorageError::OutOfRange));
            log.receive_snapshot_chunk(&m, 4, b"456789").unwrap();
            log.install_snapshot(&m).unwrap();
            assert_eq!(HOOKED.load(Ordering::SeqCst), m.index);
            let expect = if keep { (7, 8) } else { (21, 20) };
            assert_eq!((log.first_index(), log.last_index()), expect);
            let mut log = Log::open(log.into_flash()).unwrap();
            assert_eq!((log.first_index(), log.last_index()), expect);
            assert_eq!(log.snapshot_meta(), Some(m));
            assert_eq!(log.term(m.index), Some(m.term));
            let next = log.last_index() + 1;
            log.append(&entry(next, 5, b"after")).unwrap();
            log.sync().unwrap();
            let log = Log::open(log.into_flash()).unwrap();
            assert_eq!(log.entry(next).unwrap().data, b"after");
            assert_eq!(log.snapshot().unwrap().1, b"0123456789");
        }
    }

    #[test]
    fn a_board_runs_indefinitely_with_a_snapshot_every_few_entries() {
        let mut log = Log::open(RamFlash::new()).unwrap();
        let mut applied = 0u64;
        for i in 1..=2000u64 {
            log.append(&entry(i, 1, &i.to_le_bytes())).unwrap();
            if i % 3 == 0 {
                log.sync().unwrap();
                applied = i;
            }
            if applied >= log.snapshot_meta().map_or(0, |m| m.index) + 20 {
                let data = applied.to_le_bytes();
                log.save_snapshot(meta(applied, 1, &data), &data).unwrap();
                log.compact(applied).unwrap();
            }
            if i % 250 == 0 {
                log.sync().unwrap();
                log = Log::open(log.into_flash()).unwrap();
            }
        }
        assert_eq!(log.last_index(), 2000);
        assert!(log.first_index() > 1900);
        assert!(log.rewrites() > 0 || log.bank().1 > 50);
    }
}
