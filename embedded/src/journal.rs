//! A board's durable store on any `embedded-storage` NorFlash:
//! [`FlashJournal`] performs the node's `Output::Persist` batches as records
//! appended to a journal in flash, and at boot replays them into the node's
//! memory log (an [`ArrayLog`](coracle::ArrayLog): entries, hard state, the
//! kept snapshot's metadata), keeping the snapshot's bytes to restore the
//! state machine from and to send to followers. [`MarkStore`] keeps the UDP
//! link's send-counter mark the same way.
//!
//! The node never sees the journal: the host performs each batch
//! ([`FlashJournal::persist`], one flash write for the whole batch: group
//! commit), reads snapshot chunks from it ([`FlashJournal::snapshot_chunk`]),
//! and gives it the snapshots of its state machine it takes
//! ([`FlashJournal::save_taken`]). A board that reboots keeps its term, its
//! vote and every entry it acknowledged.
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
//!               8 log start, 9 compaction)
//!      3     1  0
//!      4     4  CRC-32 (IEEE) of bytes 0..4 and of the payload
//!      8     n  payload (integers little-endian), then 0xff up to 4-byte alignment
//! ```
//!
//! An erased header (`ff ff ff ff`) ends the journal. A header that does
//! not check (a write torn by a power cut) is skipped word by word, so a
//! torn tail loses only the records that were never reported durable.
//!
//! A batch is its records in the contract's order: the hard state, the kept
//! snapshot (metadata with its length, then its bytes: replay keeps it only
//! once its last byte is read, so one torn mid-way leaves the previous one),
//! the log's new start, a truncation, the entries, the compaction point.
//! Chunks of a snapshot being received stay in RAM until it is installed (a
//! node that restarts starts receiving it again from the start).
//!
//! # Compaction in steps, between turns of the loop
//!
//! Compaction only appends (the snapshot and the compaction point). Once
//! more than [`FlashJournal::set_rewrite_above`] bytes were appended since
//! the last rewrite, the journal asks for maintenance
//! ([`FlashJournal::pending`]) and the host runs it with
//! [`FlashJournal::step`] between turns of its loop, never inside a node
//! input: each step erases one erase unit of the other bank (or starts its
//! erase and, on a flash that erases in the background, comes back until
//! it is done: see [`JournalFlash`]), or writes the
//! live state there (the kept snapshot, the log's start, the hard state and
//! the entries of the memory log) and then its bank header (a generation one
//! higher: the commit point), after which the old bank is erased, one unit
//! per step again. Batches keep being written to the active bank between
//! steps, durable at once: a board erases flash without stalling the node's
//! timers. At open the bank with the highest valid header is the journal
//! (bank 0 if neither has one).
//!
//! Crash safety: until the new bank's header checks, the old bank is the
//! journal, intact (it is erased only after). Once the header checks, every
//! record before it in the new bank was written earlier, so the new bank is
//! complete; a half-erased old bank cannot outrank it (lower generation, and
//! a torn header fails its CRC), and it is erased again before it is used.
//! Each step is tested on [`RamFlash`] with a power cut at every byte and
//! erase page.
//!
//! A batch that no longer fits the active bank is not written: it becomes
//! durable with the next rewrite, which the host then runs at once
//! ([`Persisted::AfterRewrite`]: the node waits for it, its timers do not).
//! When even the live state does not fit a bank, that rewrite fails with
//! [`StorageError::Full`]: compact (snapshot) more often.
//!
//! ```
//! use coracle::{ArrayLog, Entries, Entry, EntryKind, HardState, LogStorage, Batch, Persist, SyncToken};
//! use coracle_embedded::journal::{FlashJournal, Persisted, RamFlash};
//!
//! let mut log: ArrayLog<16, 8> = ArrayLog::new();
//! let mut journal: FlashJournal<RamFlash<4096>> =
//!     FlashJournal::open(RamFlash::new(), &mut log).unwrap();
//! let entries = [Entry { index: 1, term: 3, kind: EntryKind::Command, data: b"x" }];
//! let batch = Batch {
//!     token: SyncToken(1),
//!     hard_state: Some(HardState { current_term: 3, voted_for: Some(2) }),
//!     snapshot_chunk: None,
//!     snapshot: None,
//!     reset: None,
//!     truncate_from: None,
//!     entries: Entries::from_slice(&entries),
//!     compact_through: None,
//! };
//! assert_eq!(journal.persist(&batch), Ok(Persisted::Durable));
//!
//! // Power cycle: the flash is all that is left.
//! let mut log: ArrayLog<16, 8> = ArrayLog::new();
//! FlashJournal::<_>::open(journal.into_flash(), &mut log).unwrap();
//! assert_eq!(log.hard_state().voted_for, Some(2));
//! assert_eq!(log.entry(1).unwrap().data, b"x");
//! ```

use core::fmt;

use coracle::{
    Batch, Entry, EntryKind, HardState, Index, LogStorage, SnapshotMeta, SnapshotWrite,
    StorageError, Term,
};
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};

const HEADER: usize = 8;
/// The largest record payload (an entry of 239 bytes of data).
pub const MAX_PAYLOAD: usize = 256;
/// Bytes of records gathered in RAM before they are written.
const PENDING: usize = 512;

const KIND_HARD_STATE: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_MARK: u8 = 4;
const KIND_BANK: u8 = 5;
const KIND_SNAP_META: u8 = 6;
const KIND_SNAP_DATA: u8 = 7;
const KIND_BASE: u8 = 8;
const KIND_COMPACT: u8 = 9;
/// Bytes of a bank header record (an 8-byte generation).
const BANK_HEADER: usize = HEADER + 8;
/// Bytes of an entry record's payload before the data: index, term, kind.
const ENTRY_FIXED: usize = 17;
/// Bytes of a snapshot metadata record's payload before the configuration.
const META_FIXED: usize = 24;
/// The most configuration bytes a snapshot record holds (25 members).
const MAX_CONFIG: usize = MAX_PAYLOAD - META_FIXED;
/// Snapshot bytes in one data record (after its 8-byte offset).
const SNAP_CHUNK: usize = MAX_PAYLOAD - 8;

/// Why a journal could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalError {
    /// The flash's read or write unit does not divide 4 bytes.
    Alignment,
    /// The flash failed.
    Flash,
    /// What the journal holds does not fit the memory log (more entries
    /// than its capacity, an entry larger than a slot) or the snapshot
    /// buffer.
    LogTooSmall,
    /// The records do not follow each other (an entry after a gap).
    Inconsistent,
    /// The flash is too small for two banks of at least one erase unit.
    TooSmall,
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Alignment => "flash read/write unit does not divide 4 bytes",
            Self::Flash => "flash failed",
            Self::LogTooSmall => "journal holds more than the memory log can",
            Self::Inconsistent => "journal records do not follow each other",
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

/// Bytes a record with a payload of `len` bytes takes in flash.
const fn record_len(len: usize) -> usize {
    HEADER + padded(len)
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
    let total = record_len(len);
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
    if len > MAX_PAYLOAD || out.len() + record_len(len) > P {
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
        buf.clear();
        return Err(StorageError::Full);
    }
    let result = flash
        .write(*at as u32, buf)
        .map_err(|_| StorageError::Unavailable);
    *at += buf.len();
    buf.clear();
    result
}

fn entry_kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Command => 0,
        EntryKind::Noop => 1,
        EntryKind::Membership => 2,
    }
}

/// The payload of a hard state record.
struct HardStateBytes {
    term: [u8; 8],
    voted: [u8; 1],
    vote: [u8; 8],
}

impl HardStateBytes {
    fn of(hs: &HardState) -> Self {
        Self {
            term: hs.current_term.to_le_bytes(),
            voted: [u8::from(hs.voted_for.is_some())],
            vote: hs.voted_for.unwrap_or(0).to_le_bytes(),
        }
    }

    fn as_parts(&self) -> [&[u8]; 3] {
        [&self.term, &self.voted, &self.vote]
    }
}

/// The payload of a snapshot metadata record, before the configuration.
fn meta_bytes(meta: &SnapshotMeta, len: usize) -> [u8; META_FIXED] {
    let mut out = [0u8; META_FIXED];
    out[..8].copy_from_slice(&meta.index.to_le_bytes());
    out[8..16].copy_from_slice(&meta.term.to_le_bytes());
    out[16..].copy_from_slice(&(len as u64).to_le_bytes());
    out
}

/// Bytes the records of a snapshot with `len` bytes take.
fn snapshot_records_len(meta: &SnapshotMeta, len: usize) -> usize {
    let full = len / SNAP_CHUNK;
    let rest = len % SNAP_CHUNK;
    record_len(META_FIXED + meta.config().len())
        + full * record_len(8 + SNAP_CHUNK)
        + if rest > 0 { record_len(8 + rest) } else { 0 }
}

/// How [`FlashJournal::persist`] took a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persisted {
    /// Written: durable now.
    Durable,
    /// The active bank has no room for it: it becomes durable with the
    /// next rewrite ([`FlashJournal::step`] returns
    /// [`Step::Rewritten`]), which is due at once.
    AfterRewrite,
}

/// What one [`FlashJournal::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing was due.
    Idle,
    /// Erased (or, on a [`JournalFlash`] that erases in the background,
    /// started erasing) erase unit `unit` (of `units`) of the other bank,
    /// `bank`.
    Erasing {
        /// The bank being erased.
        bank: usize,
        /// The unit, from 0.
        unit: usize,
        /// Units in a bank.
        units: usize,
    },
    /// The flash is still erasing in the background: nothing was done.
    Waiting,
    /// Every unit of `bank` is erased.
    Erased {
        /// The bank erased.
        bank: usize,
    },
    /// Wrote the live state into `bank`, which is the journal now; every
    /// batch taken with [`Persisted::AfterRewrite`] is durable.
    Rewritten {
        /// The new active bank.
        bank: usize,
        /// Its generation.
        generation: u64,
        /// Bytes of it in use.
        used: usize,
    },
}

/// How the journal erases its flash: a [`NorFlash`] that may erase in the
/// background (a SPI NOR chip erases on its own while the CPU goes on, its
/// status register says when it is done), so a board's loop keeps running
/// during an erase, not only between erase units. The defaults erase
/// before returning; [`BlockingErase`] gives any `NorFlash` those.
///
/// While an erase runs, the flash's reads, writes and erases wait for it
/// (a batch written meanwhile is delayed, never torn).
pub trait JournalFlash: NorFlash {
    /// Starts erasing `from..to` (whole erase units); by default erases it
    /// before returning.
    ///
    /// # Errors
    /// The flash's.
    fn start_erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.erase(from, to)
    }

    /// Is an erase started with [`JournalFlash::start_erase`] still
    /// running? By default never.
    fn erase_busy(&mut self) -> bool {
        false
    }
}

/// Any [`NorFlash`] as a [`JournalFlash`] that erases before returning (one
/// erase unit per [`FlashJournal::step`]).
#[derive(Debug)]
pub struct BlockingErase<F>(pub F);

impl<F: NorFlash> embedded_storage::nor_flash::ErrorType for BlockingErase<F> {
    type Error = F::Error;
}

impl<F: NorFlash> ReadNorFlash for BlockingErase<F> {
    const READ_SIZE: usize = F::READ_SIZE;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.0.read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl<F: NorFlash> NorFlash for BlockingErase<F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.0.erase(from, to)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.write(offset, bytes)
    }
}

impl<F: NorFlash> JournalFlash for BlockingErase<F> {}

/// A board's durable store: a journal of the node's writes on the flash
/// `F`, keeping the snapshot (at most `SNAP` bytes) in RAM (see the
/// [module documentation](self)).
pub struct FlashJournal<F: JournalFlash, const SNAP: usize = 128> {
    flash: F,
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
    /// The kept snapshot and its bytes.
    kept: Option<SnapshotMeta>,
    kept_data: heapless::Vec<u8, SNAP>,
    /// A snapshot the host took ([`FlashJournal::save_taken`]), by index.
    taken: Option<Index>,
    taken_data: heapless::Vec<u8, SNAP>,
    /// A snapshot being received: its index and term, and the bytes so far.
    incoming: Option<(Index, Term)>,
    incoming_data: heapless::Vec<u8, SNAP>,
    /// Batches were taken but not written (no room): the next rewrite
    /// makes them durable.
    owed: bool,
    /// A rewrite that owed batches failed: nothing is written any more.
    broken: bool,
    /// The erase under way: the next unit of the other bank to erase (the
    /// number of units once the last one was started).
    erasing: Option<usize>,
    rewrites: u64,
    /// A rewrite is due once more than this was appended since the last.
    rewrite_above: usize,
    /// Bytes in use after the last rewrite (0 at open: how much of the bank
    /// is live is not known then).
    used_after_rewrite: usize,
}

impl<F: JournalFlash, const SNAP: usize> fmt::Debug for FlashJournal<F, SNAP> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlashJournal")
            .field("bank", &self.bank)
            .field("generation", &self.generation)
            .field("end", &self.end)
            .field("kept", &self.kept.map(|m| m.index))
            .field("owed", &self.owed)
            .field("erasing", &self.erasing)
            .finish_non_exhaustive()
    }
}

/// The snapshot replay is reading.
struct Staged<const SNAP: usize> {
    meta: SnapshotMeta,
    len: usize,
    data: heapless::Vec<u8, SNAP>,
}

impl<F: JournalFlash, const SNAP: usize> FlashJournal<F, SNAP> {
    /// Replays the journal in `flash` (an erased flash is an empty journal)
    /// into `log`, an empty memory log: the bank with the newest valid bank
    /// header, or bank 0 if none has one.
    ///
    /// # Errors
    /// See [`JournalError`].
    pub fn open<S: LogStorage>(mut flash: F, log: &mut S) -> Result<Self, JournalError> {
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
            bank_size,
            bank,
            generation,
            other_dirty: true,
            end: 0,
            pending: heapless::Vec::new(),
            replayed: 0,
            kept: None,
            kept_data: heapless::Vec::new(),
            taken: None,
            taken_data: heapless::Vec::new(),
            incoming: None,
            incoming_data: heapless::Vec::new(),
            owed: false,
            broken: false,
            erasing: None,
            rewrites: 0,
            rewrite_above: bank_size / 2,
            used_after_rewrite: 0,
        };
        this.replay(log)?;
        Ok(this)
    }

    fn replay<S: LogStorage>(&mut self, log: &mut S) -> Result<(), JournalError> {
        let mut payload = [0u8; MAX_PAYLOAD];
        let limit = (self.bank + 1) * self.bank_size;
        let mut offset = self.bank * self.bank_size;
        let mut staged: Option<Staged<SNAP>> = None;
        while let Some(record) = read_record(&mut self.flash, offset, limit, &mut payload) {
            let Ok((kind, len, total)) = record else {
                offset += 4;
                continue;
            };
            offset += total;
            self.replayed += 1;
            let p = &payload[..len];
            match kind {
                KIND_HARD_STATE if len == 17 => {
                    let voted_for = (p[8] != 0).then(|| le_u64(p, 9));
                    log.set_hard_state(HardState {
                        current_term: le_u64(p, 0),
                        voted_for,
                    });
                }
                KIND_ENTRY if len >= ENTRY_FIXED => {
                    let kind = match p[16] {
                        0 => EntryKind::Command,
                        1 => EntryKind::Noop,
                        _ => EntryKind::Membership,
                    };
                    replay_entry(
                        log,
                        &Entry {
                            index: le_u64(p, 0),
                            term: le_u64(p, 8),
                            kind,
                            data: &p[ENTRY_FIXED..],
                        },
                    )?;
                }
                KIND_TRUNCATE if len == 8 => {
                    let from = le_u64(p, 0);
                    if from >= log.first_index() && from <= log.last_index() {
                        log.truncate_suffix(from);
                    }
                }
                KIND_SNAP_META if len >= META_FIXED => {
                    let size = le_u64(p, 16);
                    let meta = SnapshotMeta::new(le_u64(p, 0), le_u64(p, 8), &p[META_FIXED..]);
                    staged = match (meta, usize::try_from(size)) {
                        (Some(meta), Ok(len)) if len <= SNAP => Some(Staged {
                            meta,
                            len,
                            data: heapless::Vec::new(),
                        }),
                        (Some(_), _) => return Err(JournalError::LogTooSmall),
                        (None, _) => None,
                    };
                }
                KIND_SNAP_DATA if len >= 8 => {
                    if let Some(s) = staged.as_mut() {
                        if le_u64(p, 0) == s.data.len() as u64 {
                            s.data
                                .extend_from_slice(&p[8..])
                                .map_err(|_| JournalError::LogTooSmall)?;
                        }
                    }
                }
                KIND_BASE if len == 16 => restart_after(log, le_u64(p, 0), le_u64(p, 8)),
                KIND_COMPACT if len == 8 => {
                    let through = le_u64(p, 0);
                    if through >= log.first_index() {
                        log.compact(through.min(log.last_index()));
                    }
                }
                // Bank headers were read; counter marks live in a
                // MarkStore; unknown kinds are skipped.
                _ => {}
            }
            // A snapshot counts once its last byte is read.
            if staged.as_ref().is_some_and(|s| s.data.len() >= s.len) {
                if let Some(s) = staged.take() {
                    log.set_snapshot_meta(s.meta);
                    self.kept = Some(s.meta);
                    self.kept_data = s.data;
                }
            }
        }
        self.end = offset;
        Ok(())
    }

    /// Performs `batch` (see [`coracle::Batch`]): appends its records to the
    /// journal and writes them (one write for the batch, or a few for a
    /// large one), or, when the active bank has no room for it, keeps it
    /// for the next rewrite ([`Persisted::AfterRewrite`]). Chunks of a
    /// snapshot being received are kept in RAM until it is installed.
    ///
    /// # Errors
    /// [`StorageError::EntryTooLarge`] for a snapshot larger than `SNAP`
    /// bytes or an entry or configuration too large for a record;
    /// [`StorageError::OutOfRange`] for an install or a taken snapshot the
    /// journal has no bytes of; [`StorageError::Unavailable`] if the flash
    /// failed. The node must then stop acknowledging (`persist_failed`).
    pub fn persist(&mut self, batch: &Batch<'_>) -> Result<Persisted, StorageError> {
        if self.broken {
            return Err(StorageError::Unavailable);
        }
        if let Some(chunk) = batch.snapshot_chunk {
            let id = (chunk.meta.index, chunk.meta.term);
            if chunk.offset == 0 || self.incoming != Some(id) {
                self.incoming = Some(id);
                self.incoming_data.clear();
            }
            if self.incoming_data.len() as u64 != chunk.offset {
                return Err(StorageError::OutOfRange);
            }
            self.incoming_data
                .extend_from_slice(chunk.data)
                .map_err(|_| StorageError::EntryTooLarge)?;
        }
        match batch.snapshot {
            Some(SnapshotWrite::Installed(meta)) => {
                Self::check_meta(meta)?;
                if self.incoming != Some((meta.index, meta.term)) {
                    return Err(StorageError::OutOfRange);
                }
                self.incoming = None;
                self.kept = Some(*meta);
                self.kept_data = core::mem::take(&mut self.incoming_data);
            }
            Some(SnapshotWrite::Taken(meta)) => {
                Self::check_meta(meta)?;
                if self.taken != Some(meta.index) {
                    return Err(StorageError::OutOfRange);
                }
                self.taken = None;
                self.kept = Some(*meta);
                self.kept_data = core::mem::take(&mut self.taken_data);
            }
            None => {}
        }
        let limit = (self.bank + 1) * self.bank_size;
        if self.owed || self.end + self.batch_len(batch)? > limit {
            self.owed = true;
            return Ok(Persisted::AfterRewrite);
        }
        if let Some(hs) = &batch.hard_state {
            self.record(KIND_HARD_STATE, &HardStateBytes::of(hs).as_parts())?;
        }
        if batch.snapshot.is_some() {
            self.record_snapshot()?;
        }
        if let Some((index, term)) = batch.reset {
            self.record(KIND_BASE, &[&index.to_le_bytes(), &term.to_le_bytes()])?;
        }
        if let Some(from) = batch.truncate_from {
            self.record(KIND_TRUNCATE, &[&from.to_le_bytes()])?;
        }
        for e in batch.entries.iter() {
            self.record_entry(&e)?;
        }
        if let Some(through) = batch.compact_through {
            self.record(KIND_COMPACT, &[&through.to_le_bytes()])?;
        }
        self.write_pending()?;
        Ok(Persisted::Durable)
    }

    /// Bytes the records of `batch` take.
    fn batch_len(&self, batch: &Batch<'_>) -> Result<usize, StorageError> {
        let mut len = 0;
        if batch.hard_state.is_some() {
            len += record_len(17);
        }
        if let (Some(_), Some(meta)) = (batch.snapshot, &self.kept) {
            len += snapshot_records_len(meta, self.kept_data.len());
        }
        if batch.reset.is_some() {
            len += record_len(16);
        }
        if batch.truncate_from.is_some() {
            len += record_len(8);
        }
        for e in batch.entries.iter() {
            if ENTRY_FIXED + e.data.len() > MAX_PAYLOAD {
                return Err(StorageError::EntryTooLarge);
            }
            len += record_len(ENTRY_FIXED + e.data.len());
        }
        if batch.compact_through.is_some() {
            len += record_len(8);
        }
        Ok(len)
    }

    fn check_meta(meta: &SnapshotMeta) -> Result<(), StorageError> {
        if meta.config().len() > MAX_CONFIG {
            Err(StorageError::EntryTooLarge)
        } else {
            Ok(())
        }
    }

    /// Keeps `data`, the host's snapshot of its state machine at applied
    /// `index`, until the node makes it the kept snapshot (call
    /// `Node::snapshot_taken(index)` next: its batch writes it).
    ///
    /// # Errors
    /// [`StorageError::EntryTooLarge`] if `data` is larger than `SNAP`.
    pub fn save_taken(&mut self, index: Index, data: &[u8]) -> Result<(), StorageError> {
        self.taken_data =
            heapless::Vec::from_slice(data).map_err(|_| StorageError::EntryTooLarge)?;
        self.taken = Some(index);
        Ok(())
    }

    /// The kept snapshot, with its bytes.
    #[must_use]
    pub fn snapshot(&self) -> Option<(&SnapshotMeta, &[u8])> {
        self.kept.as_ref().map(|m| (m, &self.kept_data[..]))
    }

    /// Reads the kept snapshot at `index` from `offset` into `buf`: how
    /// many bytes, and whether they reach its end (for
    /// `Output::SendSnapshot`); `None` if the kept snapshot is another one
    /// or `offset` is past its end.
    pub fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<(usize, bool)> {
        let meta = self.kept.as_ref()?;
        let data = &self.kept_data[..];
        let start = usize::try_from(offset).ok()?;
        if meta.index != index || start > data.len() || (start == data.len() && start > 0) {
            return None;
        }
        let end = start.saturating_add(buf.len()).min(data.len());
        buf[..end - start].copy_from_slice(&data[start..end]);
        Some((end - start, end == data.len()))
    }

    /// Compaction and snapshot installs append to the journal; once more
    /// than `bytes` were appended since the last rewrite, the live state is
    /// rewritten into the other bank ([`FlashJournal::step`]). The default
    /// is half a bank: one rewrite (and the erase of a bank) per half a bank
    /// of records.
    pub fn set_rewrite_above(&mut self, bytes: usize) {
        self.rewrite_above = bytes;
    }

    /// Is maintenance due or under way? The host then calls
    /// [`FlashJournal::step`] between turns of its loop.
    #[must_use]
    pub fn pending(&self) -> bool {
        self.erasing.is_some() || self.rewrite_due()
    }

    fn rewrite_due(&self) -> bool {
        self.owed || self.used().saturating_sub(self.used_after_rewrite) > self.rewrite_above
    }

    /// One bounded step of maintenance, between turns of the host's loop:
    /// erases one erase unit of the other bank (or starts erasing it, and
    /// comes back while the flash is busy: [`Step::Waiting`]), or writes the
    /// live state
    /// (the kept snapshot, the hard state and the entries of `log`, the
    /// node's memory log, which must hold every entry, as an `ArrayLog`
    /// does) into it and makes it the journal. Call it after the node's
    /// batches were all handed to [`FlashJournal::persist`] (`log` then
    /// holds what the journal holds, and what it owes).
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] if the flash failed or `log` lacks an
    /// entry's data, [`StorageError::Full`] if the live state does not fit
    /// a bank. The journal gives up the rewrite (retrying once as much was
    /// appended again); batches it owed ([`Persisted::AfterRewrite`]) will
    /// not become durable: the node must stop acknowledging, and the journal
    /// refuses every later batch.
    pub fn step<S: LogStorage>(&mut self, log: &S) -> Result<Step, StorageError> {
        let result = match self.erasing {
            Some(unit) => self.erase_unit(unit),
            None if !self.rewrite_due() => return Ok(Step::Idle),
            None if self.other_dirty => self.erase_unit(0),
            None => self.rewrite(log),
        };
        if result.is_err() {
            // Retry once as much was appended again; batches owed are lost
            // for good, and nothing after them may be written.
            self.erasing = None;
            self.broken |= self.owed;
            self.owed = false;
            self.used_after_rewrite = self.used();
        }
        result
    }

    /// Erases (or starts erasing) unit `unit` of the other bank; once every
    /// unit was, waits for the flash to finish.
    fn erase_unit(&mut self, unit: usize) -> Result<Step, StorageError> {
        let erase = F::ERASE_SIZE.max(1);
        let units = self.bank_size / erase;
        let other = 1 - self.bank;
        if self.flash.erase_busy() {
            return Ok(Step::Waiting);
        }
        if unit >= units {
            self.erasing = None;
            self.other_dirty = false;
            return Ok(Step::Erased { bank: other });
        }
        let from = other * self.bank_size + unit * erase;
        self.flash
            .start_erase(from as u32, (from + erase) as u32)
            .map_err(|_| StorageError::Unavailable)?;
        self.erasing = Some(unit + 1);
        Ok(Step::Erasing {
            bank: other,
            unit,
            units,
        })
    }

    /// Writes the live state into the (erased) other bank, then its bank
    /// header, and starts erasing the old one.
    fn rewrite<S: LogStorage>(&mut self, log: &S) -> Result<Step, StorageError> {
        debug_assert_eq!(
            log.snapshot_meta(),
            self.kept,
            "the log and the journal agree"
        );
        let target = 1 - self.bank;
        let start = target * self.bank_size;
        let limit = start + self.bank_size;
        self.other_dirty = true;
        self.pending.clear();
        let mut at = start + BANK_HEADER;
        let (flash, buf) = (&mut self.flash, &mut self.pending);
        if let Some(meta) = &self.kept {
            let len = self.kept_data.len();
            put(
                flash,
                buf,
                &mut at,
                limit,
                KIND_SNAP_META,
                &[&meta_bytes(meta, len), meta.config()],
            )?;
            for (i, chunk) in self.kept_data.chunks(SNAP_CHUNK).enumerate() {
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
        let base = log.first_index() - 1;
        let base_term = log.term(base).ok_or(StorageError::Unavailable)?;
        put(
            flash,
            buf,
            &mut at,
            limit,
            KIND_BASE,
            &[&base.to_le_bytes(), &base_term.to_le_bytes()],
        )?;
        put(
            flash,
            buf,
            &mut at,
            limit,
            KIND_HARD_STATE,
            &HardStateBytes::of(&log.hard_state()).as_parts(),
        )?;
        for index in log.first_index()..=log.last_index() {
            let e = log.entry(index).ok_or(StorageError::Unavailable)?;
            put(
                flash,
                buf,
                &mut at,
                limit,
                KIND_ENTRY,
                &[
                    &e.index.to_le_bytes(),
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
            .write(start as u32, &header)
            .map_err(|_| StorageError::Unavailable)?;
        self.bank = target;
        self.generation = generation;
        self.end = at;
        self.rewrites += 1;
        self.owed = false;
        self.used_after_rewrite = self.used();
        // The old bank is no longer the journal: erase it, in steps.
        self.erasing = Some(0);
        Ok(Step::Rewritten {
            bank: target,
            generation,
            used: self.used(),
        })
    }

    /// Records replayed when the journal was opened.
    #[must_use]
    pub const fn replayed(&self) -> usize {
        self.replayed
    }

    /// Bytes of the active bank the journal uses.
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

    /// The flash back (to reopen it, as after a reboot).
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// The flash, to look at.
    #[must_use]
    pub const fn flash(&self) -> &F {
        &self.flash
    }

    fn record_entry(&mut self, e: &Entry<'_>) -> Result<(), StorageError> {
        self.record(
            KIND_ENTRY,
            &[
                &e.index.to_le_bytes(),
                &e.term.to_le_bytes(),
                &[entry_kind_byte(e.kind)],
                e.data,
            ],
        )
    }

    /// The records of the kept snapshot.
    fn record_snapshot(&mut self) -> Result<(), StorageError> {
        let Some(meta) = self.kept else {
            return Ok(());
        };
        let data = core::mem::take(&mut self.kept_data);
        let result = (|| {
            self.record(
                KIND_SNAP_META,
                &[&meta_bytes(&meta, data.len()), meta.config()],
            )?;
            for (i, chunk) in data.chunks(SNAP_CHUNK).enumerate() {
                let offset = ((i * SNAP_CHUNK) as u64).to_le_bytes();
                self.record(KIND_SNAP_DATA, &[&offset, chunk])?;
            }
            Ok(())
        })();
        self.kept_data = data;
        result
    }

    fn write_pending(&mut self) -> Result<(), StorageError> {
        let limit = (self.bank + 1) * self.bank_size;
        flush(&mut self.flash, &mut self.pending, &mut self.end, limit)
    }

    fn record(&mut self, kind: u8, parts: &[&[u8]]) -> Result<(), StorageError> {
        let limit = (self.bank + 1) * self.bank_size;
        put(
            &mut self.flash,
            &mut self.pending,
            &mut self.end,
            limit,
            kind,
            parts,
        )
    }
}

/// Appends a replayed entry, replacing the suffix it overwrites.
fn replay_entry<S: LogStorage>(log: &mut S, entry: &Entry<'_>) -> Result<(), JournalError> {
    if entry.index < log.first_index() {
        return Ok(());
    }
    if entry.index <= log.last_index() {
        log.truncate_suffix(entry.index);
    }
    log.append(entry).map_err(|e| match e {
        StorageError::Full | StorageError::EntryTooLarge => JournalError::LogTooSmall,
        _ => JournalError::Inconsistent,
    })
}

/// The log restarts after `index` of `term`: the entries through it go,
/// and those after it stay if the log holds `index` with `term`;
/// otherwise every entry goes (a snapshot from a leader replaced them).
fn restart_after<S: LogStorage>(log: &mut S, index: Index, term: Term) {
    if index + 1 >= log.first_index() && log.term(index) == Some(term) {
        if index >= log.first_index() {
            log.compact(index);
        }
    } else {
        log.reset(index, term);
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
    /// As a [`JournalFlash`]: an erase runs in the background for this many
    /// polls of [`JournalFlash::erase_busy`] (0: erases before returning).
    pub erase_polls: u32,
    busy: u32,
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
            erase_polls: 0,
            busy: 0,
        }
    }

    /// The raw contents.
    #[must_use]
    pub const fn bytes(&self) -> &[u8; SIZE] {
        &self.bytes
    }
}

impl<const SIZE: usize> JournalFlash for RamFlash<SIZE> {
    fn start_erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.erase(from, to)?;
        self.busy = self.erase_polls;
        Ok(())
    }

    fn erase_busy(&mut self) -> bool {
        self.busy = self.busy.saturating_sub(1);
        self.busy > 0
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
    extern crate std;

    use super::*;
    use coracle::conformance::durable::{self, Crash, DurableStore, Recovered};
    use coracle::{ArrayLog, Entries, MemStore, SnapshotChunkWrite, SyncToken};
    use std::vec::Vec;

    // Two slots more than the tests fill: the last two take no command.
    type Log = ArrayLog<34, 16, 64>;
    type Journal = FlashJournal<RamFlash<4096>, 64>;

    fn entry(index: Index, term: Term, data: &[u8]) -> Entry<'_> {
        Entry {
            index,
            term,
            kind: EntryKind::Command,
            data,
        }
    }

    fn batch<'a>(entries: &'a [Entry<'a>]) -> Batch<'a> {
        Batch {
            token: SyncToken(0),
            hard_state: None,
            snapshot_chunk: None,
            snapshot: None,
            reset: None,
            truncate_from: None,
            entries: Entries::from_slice(entries),
            compact_through: None,
        }
    }

    fn hard_state(term: Term) -> HardState {
        HardState {
            current_term: term,
            voted_for: Some(term % 3),
        }
    }

    fn meta(index: Index, term: Term) -> SnapshotMeta {
        SnapshotMeta::new(index, term, b"cfg-records").unwrap()
    }

    /// What a memory log holds, comparable.
    type State = (
        HardState,
        Index,
        Index,
        Option<Term>,
        Vec<(Index, Term, Vec<u8>)>,
        Option<Index>,
    );

    fn state_of<S: LogStorage>(log: &S) -> State {
        let entries = (log.first_index()..=log.last_index())
            .map(|i| {
                let e = log.entry(i).unwrap();
                (e.index, e.term, e.data.to_vec())
            })
            .collect();
        (
            log.hard_state(),
            log.first_index(),
            log.last_index(),
            log.term(log.first_index() - 1),
            entries,
            log.snapshot_meta().map(|m| m.index),
        )
    }

    /// Opens the journal on `flash` (after a power cut): what the node
    /// would restart with, and the snapshot's bytes.
    fn reopen(flash: RamFlash<4096>) -> (Journal, Log) {
        let mut flash = flash;
        flash.cut_after = None;
        let mut log = Log::new();
        let journal = Journal::open(flash, &mut log).unwrap();
        (journal, log)
    }

    /// The model: the core's `MemStore` fed the same batches.
    fn model_state(store: &MemStore) -> State {
        let mut log = Log::new();
        store.recover(&mut log).unwrap();
        state_of(&log)
    }

    fn assert_matches(flash: &RamFlash<4096>, store: &MemStore, what: &str) {
        let (journal, log) = reopen(flash.clone());
        assert_eq!(state_of(&log), model_state(store), "{what}");
        assert_eq!(
            journal.snapshot().map(|(m, b)| (*m, b.to_vec())),
            store.snapshot.clone(),
            "{what}: snapshot"
        );
    }

    /// Performs `b` on both the journal and the model.
    fn both(journal: &mut Journal, store: &mut MemStore, b: &Batch<'_>) -> Persisted {
        store.persist(b);
        journal.persist(b).unwrap()
    }

    /// Appends `n` entries of term `term` after `from` (data = the index).
    fn grow(journal: &mut Journal, store: &mut MemStore, from: Index, n: u64, term: Term) {
        let data: Vec<[u8; 3]> = (0..n).map(|k| [(from + 1 + k) as u8; 3]).collect();
        let entries: Vec<Entry<'_>> = (0..n)
            .map(|k| entry(from + 1 + k, term, &data[k as usize]))
            .collect();
        assert_eq!(both(journal, store, &batch(&entries)), Persisted::Durable);
    }

    /// Takes a snapshot at `index` and compacts through it.
    fn take(journal: &mut Journal, store: &mut MemStore, index: Index, term: Term, bytes: &[u8]) {
        journal.save_taken(index, bytes).unwrap();
        store.save_taken(index, bytes.to_vec());
        let m = meta(index, term);
        let b = Batch {
            snapshot: Some(SnapshotWrite::Taken(&m)),
            compact_through: Some(index),
            ..batch(&[])
        };
        both(journal, store, &b);
    }

    /// Runs maintenance to the end with `log` as the memory log; returns
    /// the steps.
    fn finish(journal: &mut Journal, log: &Log) -> Vec<Step> {
        let mut steps = Vec::new();
        while journal.pending() {
            steps.push(journal.step(log).unwrap());
            assert!(steps.len() < 100, "maintenance ends");
        }
        steps
    }

    /// The memory log the node would hold now (the model's, as the node
    /// writes it before the host persists).
    fn memory(store: &MemStore) -> Log {
        let mut log = Log::new();
        store.recover(&mut log).unwrap();
        log
    }

    /// The suite's journal: banks of 3 KiB on a flash erasing in the background,
    /// rewritten once 1 KiB was appended (so batches also arrive while a bank fills up
    /// and are owed to the next rewrite), snapshots of up to 256 bytes.
    type SuiteJournal = FlashJournal<RamFlash<6144>, 256>;
    const SUITE_REWRITE_ABOVE: usize = 1024;

    /// What the suite's journals did, over every seed.
    #[derive(Clone, Copy, Debug, Default)]
    struct Seen {
        rewrites: usize,
        owed: usize,
        waited: usize,
    }
    type SuiteLog = ArrayLog<32, 24, 64>;

    /// A board's journal as the durable-store conformance suite drives it: a batch is
    /// performed (and one step of maintenance run, as a board's loop does between
    /// turns), a sync runs maintenance until the owed batches are rewritten, a crash
    /// keeps only the flash, a reopen replays it into a fixed-capacity memory log.
    struct SuiteStore {
        journal: Option<SuiteJournal>,
        /// The node's memory log as the batches left it (what maintenance rewrites).
        memory: MemStore,
        seen: std::rc::Rc<core::cell::Cell<Seen>>,
    }

    impl SuiteStore {
        fn new(seen: std::rc::Rc<core::cell::Cell<Seen>>) -> Self {
            let mut flash = RamFlash::new();
            flash.erase_polls = 2;
            let mut journal = SuiteJournal::open(flash, &mut SuiteLog::new()).unwrap();
            journal.set_rewrite_above(SUITE_REWRITE_ABOVE);
            SuiteStore {
                journal: Some(journal),
                memory: MemStore::new(),
                seen,
            }
        }

        fn journal(&mut self) -> Result<&mut SuiteJournal, StorageError> {
            self.journal.as_mut().ok_or(StorageError::Unavailable)
        }

        /// One step of maintenance with the node's memory log.
        fn maintain(&mut self) -> Result<(), StorageError> {
            let mut log = SuiteLog::new();
            self.memory.recover(&mut log)?;
            let step = self.journal()?.step(&log)?;
            let mut seen = self.seen.get();
            seen.rewrites += usize::from(matches!(step, Step::Rewritten { .. }));
            seen.waited += usize::from(step == Step::Waiting);
            self.seen.set(seen);
            Ok(())
        }
    }

    impl DurableStore for SuiteStore {
        type Error = StorageError;

        fn perform(&mut self, batch: &Batch<'_>) -> Result<(), StorageError> {
            self.memory.persist(batch);
            if self.journal()?.persist(batch)? == Persisted::AfterRewrite {
                let mut seen = self.seen.get();
                seen.owed += 1;
                self.seen.set(seen);
            }
            if self.journal()?.pending() {
                self.maintain()?;
            }
            Ok(())
        }

        fn save_taken(&mut self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), StorageError> {
            self.memory.save_taken(meta.index, bytes.to_vec());
            self.journal()?.save_taken(meta.index, bytes)
        }

        fn sync(&mut self) -> Result<(), StorageError> {
            let mut steps = 0;
            while self.journal()?.pending() {
                self.maintain()?;
                steps += 1;
                assert!(steps < 10_000, "maintenance ends");
            }
            Ok(())
        }

        fn crash(&mut self, _: Crash) {}

        fn reopen(&mut self) -> Result<Recovered, StorageError> {
            let flash = self
                .journal
                .take()
                .ok_or(StorageError::Unavailable)?
                .into_flash();
            let mut log = SuiteLog::new();
            let mut journal =
                SuiteJournal::open(flash, &mut log).map_err(|_| StorageError::Unavailable)?;
            journal.set_rewrite_above(SUITE_REWRITE_ABOVE);
            let mut recovered = Recovered::from_log(&log, |_| None);
            let snapshot = journal.snapshot().map(|(m, b)| (*m, b.to_vec()));
            recovered.snapshot_bytes = snapshot.as_ref().map(|(_, b)| b.clone());
            self.memory = MemStore {
                hard_state: recovered.hard_state,
                entries: recovered.entries.clone(),
                compacted: recovered.compacted,
                snapshot,
                ..MemStore::new()
            };
            self.journal = Some(journal);
            Ok(recovered)
        }
    }

    /// The core's durable-store conformance suite (its rules and what a seed does are in
    /// `coracle::conformance::durable`), against the flash journal: random batches with
    /// syncs, crashes and reopens, rewrites into the other bank and background erases
    /// between them, the replayed state compared with `MemStore` after every reopen.
    #[test]
    fn the_durable_store_conformance_suite_passes() {
        let options = durable::Options {
            seeds: 0..24,
            max_entry_bytes: 24,
            max_entries_per_batch: 6,
            max_live_entries: 30,
            snapshot_bytes: 0..=256,
            chunk_bytes: 64,
            ..durable::Options::default()
        };
        let seen = std::rc::Rc::default();
        durable::check(&options, || SuiteStore::new(std::rc::Rc::clone(&seen)));
        let seen = seen.get();
        assert!(
            seen.rewrites >= 100 && seen.owed >= 5 && seen.waited >= 100,
            "the suite exercised the journal's maintenance: {seen:?}"
        );
    }

    #[test]
    fn what_was_persisted_survives_with_its_truncations() {
        let mut log = Log::new();
        let mut journal = Journal::open(RamFlash::new(), &mut log).unwrap();
        let mut store = MemStore::new();
        let e = [entry(1, 1, b"a"), entry(2, 2, b"bb"), entry(3, 2, b"ccc")];
        let b = Batch {
            hard_state: Some(hard_state(2)),
            ..batch(&e)
        };
        both(&mut journal, &mut store, &b);
        // A conflicting suffix replaced, in one batch.
        let e = [entry(3, 3, b"d"), entry(4, 3, b"e")];
        let b = Batch {
            hard_state: Some(hard_state(3)),
            truncate_from: Some(3),
            ..batch(&e)
        };
        both(&mut journal, &mut store, &b);
        assert_matches(&journal.flash, &store, "after two batches");
        let (_, log) = reopen(journal.into_flash());
        assert_eq!(log.entry(3).unwrap().data, b"d");
        assert_eq!(log.hard_state(), hard_state(3));
    }

    #[test]
    fn a_torn_write_at_every_byte_keeps_every_earlier_batch() {
        for cut in 0..200 {
            let mut log = Log::new();
            let mut journal = Journal::open(RamFlash::new(), &mut log).unwrap();
            let mut store = MemStore::new();
            grow(&mut journal, &mut store, 0, 1, 1);
            let before = model_state(&store);
            journal.flash.cut_after = Some(cut);
            let e = [entry(2, 5, b"second")];
            let b = Batch {
                hard_state: Some(hard_state(5)),
                ..batch(&e)
            };
            let done = journal.persist(&b).is_ok();
            store.persist(&b);
            let (mut journal, log) = reopen(journal.into_flash());
            if done {
                assert_eq!(state_of(&log), model_state(&store), "cut {cut}");
            } else {
                // Any prefix of the batch: the first entry is never lost.
                assert_eq!(log.entry(1).unwrap().data, before.4[0].2, "cut {cut}");
            }
            // The journal goes on after a torn tail.
            let next = log.last_index() + 1;
            let e = [entry(next, 6, b"after")];
            journal.persist(&batch(&e)).unwrap();
            let (_, log) = reopen(journal.into_flash());
            assert_eq!(log.entry(next).unwrap().data, b"after", "cut {cut}");
        }
    }

    #[test]
    fn garbage_flash_opens_without_panicking() {
        let mut flash = RamFlash::<4096>::new();
        let mut x: u32 = 12345;
        for b in flash.bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let _ = Journal::open(flash.clone(), &mut Log::new());
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

    #[test]
    fn compaction_appends_then_rewrites_the_live_state_in_steps() {
        let mut log = Log::new();
        let mut journal = Journal::open(RamFlash::new(), &mut log).unwrap();
        journal.set_rewrite_above(600);
        let mut store = MemStore::new();
        let hs = Batch {
            hard_state: Some(hard_state(4)),
            ..batch(&[])
        };
        both(&mut journal, &mut store, &hs);
        let mut last = 0;
        let mut rewrites = 0;
        for round in 0..12u64 {
            grow(&mut journal, &mut store, last, 6, 4);
            last += 6;
            take(&mut journal, &mut store, last - 2, 4, &[round as u8; 40]);
            if journal.pending() {
                let steps = finish(&mut journal, &memory(&store));
                let units = journal.bank_size() / 256;
                let erased = steps
                    .iter()
                    .filter(|s| matches!(s, Step::Erasing { .. }))
                    .count();
                let rewritten: Vec<_> = steps
                    .iter()
                    .filter(|s| matches!(s, Step::Rewritten { .. }))
                    .collect();
                assert_eq!(rewritten.len(), 1, "{steps:?}");
                // The old bank is erased after the rewrite, one unit a
                // step (and the other bank before the first one).
                assert!(erased == units || erased == 2 * units, "{steps:?}");
                assert!(matches!(steps.last(), Some(Step::Erased { .. })));
                rewrites += 1;
            }
            assert_matches(&journal.flash, &store, &std::format!("round {round}"));
        }
        assert!(rewrites >= 2, "{rewrites}");
        assert_eq!(journal.rewrites(), rewrites);
        let (journal, log) = reopen(journal.into_flash());
        assert_eq!(journal.snapshot().unwrap().1, &[11u8; 40]);
        assert_eq!(log.first_index(), last - 1);
        assert!(journal.used() < journal.bank_size() / 2);
    }

    #[test]
    fn batches_between_the_steps_of_a_rewrite_are_durable_at_once() {
        for erase_polls in [0, 3] {
            batches_between_steps(erase_polls);
        }
    }

    /// A rewrite on a flash that erases in the background for
    /// `erase_polls` polls, with a batch after every step.
    fn batches_between_steps(erase_polls: u32) {
        let mut log = Log::new();
        let mut flash = RamFlash::new();
        flash.erase_polls = erase_polls;
        let mut journal = Journal::open(flash, &mut log).unwrap();
        journal.set_rewrite_above(300);
        let mut store = MemStore::new();
        grow(&mut journal, &mut store, 0, 8, 1);
        take(&mut journal, &mut store, 6, 1, b"six");
        let mut last = 8;
        let mut steps = 0;
        let mut waited = 0;
        while journal.pending() {
            let waiting = journal.step(&memory(&store)).unwrap() == Step::Waiting;
            waited += usize::from(waiting);
            if journal.rewrites() > 0 {
                // One rewrite is enough (the memory log holds 32 entries).
                journal.set_rewrite_above(usize::MAX);
            }
            steps += 1;
            // A batch after every step, whatever the bank.
            let h = Batch {
                hard_state: Some(hard_state(1 + steps)),
                ..batch(&[])
            };
            both(&mut journal, &mut store, &h);
            if !waiting {
                grow(&mut journal, &mut store, last, 1, 1 + steps);
                last += 1;
            }
            assert_matches(&journal.flash, &store, &std::format!("step {steps}"));
        }
        assert!(steps > 8, "{steps}");
        // Each unit's erase was waited for while the flash was busy.
        assert_eq!(waited > 0, erase_polls > 0, "{waited}");
    }

    /// Compacts with a rewrite whose steps (and the batches between them)
    /// run on a flash that loses power after `cut` bytes or erase pages.
    /// Returns whether the run ended without the cut.
    fn rewrite_with_a_power_cut(cut: usize, outcomes: &mut [usize; 2]) -> bool {
        let mut log = Log::new();
        let mut journal = Journal::open(RamFlash::new(), &mut log).unwrap();
        journal.set_rewrite_above(200);
        let mut store = MemStore::new();
        grow(&mut journal, &mut store, 0, 10, 1);
        take(&mut journal, &mut store, 5, 1, b"five");
        // The other bank erased beforehand: the steps are the rewrite and
        // the erase of the old bank.
        journal.step(&memory(&store)).unwrap();
        while journal.erasing.is_some() {
            journal.step(&memory(&store)).unwrap();
        }
        let old = (model_state(&store), store.snapshot.clone());
        grow(&mut journal, &mut store, 10, 2, 2);
        take(&mut journal, &mut store, 11, 2, b"eleven");
        let durable = (model_state(&store), store.snapshot.clone());
        journal.flash.cut_after = Some(cut);
        let mut failed = false;
        let mut step = 0;
        while journal.pending() && !failed {
            failed |= journal.step(&memory(&store)).is_err();
            if journal.rewrites() > 1 {
                journal.set_rewrite_above(usize::MAX);
            }
            step += 1;
            let e = [entry(12 + step, 2, b"x")];
            failed |= journal.persist(&batch(&e)).is_err();
            if !failed {
                store.persist(&batch(&e));
            }
        }
        let was_cut = journal.flash.cut_after == Some(0);
        let (journal, log) = reopen(journal.into_flash());
        let got = (
            state_of(&log),
            journal.snapshot().map(|(m, b)| (*m, b.to_vec())),
        );
        if !failed {
            assert_eq!(
                got,
                (model_state(&store), store.snapshot.clone()),
                "cut {cut}"
            );
        } else {
            // Everything persisted before the cut, possibly a torn last
            // batch: at least what was durable before the rewrite began.
            assert!(got.0 .2 >= durable.0 .2, "cut {cut}: {got:?}");
            assert_eq!(got.1, durable.1, "cut {cut}");
            assert_eq!(
                got.0 .4[..durable.0 .4.len()],
                durable.0 .4[..],
                "cut {cut}"
            );
            outcomes[usize::from(journal.bank().1 > 1)] += 1;
        }
        assert_ne!(old.1, got.1);
        !was_cut && !failed
    }

    #[test]
    fn a_power_cut_at_every_write_and_erase_of_a_rewrite_loses_nothing_durable() {
        // [cut before the new bank's header, cut after it]
        let mut outcomes = [0; 2];
        let cuts = (0..5000)
            .find(|&cut| rewrite_with_a_power_cut(cut, &mut outcomes))
            .expect("completes");
        assert!(
            outcomes[0] > 50 && outcomes[1] > 0,
            "{outcomes:?} in {cuts} cuts"
        );
    }

    #[test]
    fn a_batch_that_does_not_fit_the_bank_is_durable_with_the_next_rewrite() {
        let mut log = Log::new();
        let mut journal = Journal::open(RamFlash::new(), &mut log).unwrap();
        journal.set_rewrite_above(usize::MAX);
        let mut store = MemStore::new();
        let mut owed = 0;
        let mut durable = model_state(&store);
        for term in 1..=200u64 {
            let h = Batch {
                hard_state: Some(hard_state(term)),
                ..batch(&[])
            };
            match both(&mut journal, &mut store, &h) {
                Persisted::Durable => durable = model_state(&store),
                Persisted::AfterRewrite => owed += 1,
            }
            if owed == 3 {
                break;
            }
        }
        assert_eq!(owed, 3);
        // Not durable yet: a reboot now finds the state before them.
        let (_, log) = reopen(journal.flash.clone());
        assert_eq!(state_of(&log), durable);
        assert!(journal.pending());
        let steps = finish(&mut journal, &memory(&store));
        assert!(steps.iter().any(|s| matches!(s, Step::Rewritten { .. })));
        assert_matches(&journal.flash, &store, "after the rewrite");
        let h = Batch {
            hard_state: Some(hard_state(300)),
            ..batch(&[])
        };
        assert_eq!(both(&mut journal, &mut store, &h), Persisted::Durable);
        assert_matches(&journal.flash, &store, "written again");
    }

    #[test]
    fn a_live_state_larger_than_a_bank_fails_the_owed_rewrite_and_every_later_batch() {
        // Banks of 512 bytes; 32 entries of 16 bytes take 1152.
        let mut log = Log::new();
        let mut journal: FlashJournal<RamFlash<1024>, 64> =
            FlashJournal::open(RamFlash::new(), &mut log).unwrap();
        journal.set_rewrite_above(usize::MAX);
        let data = [0x55u8; 16];
        let mut owed = false;
        for i in 1..=32 {
            let e = [entry(i, 1, &data)];
            log.append(&e[0]).unwrap();
            owed |= journal.persist(&batch(&e)).unwrap() == Persisted::AfterRewrite;
        }
        assert!(owed);
        let mut result = Ok(Step::Idle);
        while journal.pending() && result.is_ok() {
            result = journal.step(&log);
        }
        assert_eq!(result, Err(StorageError::Full));
        assert_eq!(
            journal.persist(&batch(&[])),
            Err(StorageError::Unavailable),
            "nothing after owed batches that were lost"
        );
    }

    #[test]
    fn an_installed_snapshot_is_durable_with_the_log_after_it() {
        for keep in [false, true] {
            let mut log = Log::new();
            let mut journal = Journal::open(RamFlash::new(), &mut log).unwrap();
            let mut store = MemStore::new();
            grow(&mut journal, &mut store, 0, 8, 1);
            // Entry 6 has term 1: a snapshot at (6, 1) keeps 7 and 8; one at
            // (20, 5) replaces the whole log.
            let m = if keep { meta(6, 1) } else { meta(20, 5) };
            for (offset, data) in [(0u64, &b"0123"[..]), (4, b"456789")] {
                let b = Batch {
                    snapshot_chunk: Some(SnapshotChunkWrite {
                        meta: &m,
                        offset,
                        data,
                    }),
                    ..batch(&[])
                };
                both(&mut journal, &mut store, &b);
            }
            let b = Batch {
                snapshot: Some(SnapshotWrite::Installed(&m)),
                reset: (!keep).then_some((20, 5)),
                compact_through: keep.then_some(6),
                ..batch(&[])
            };
            both(&mut journal, &mut store, &b);
            assert_matches(&journal.flash, &store, "installed");
            let (mut journal, log) = reopen(journal.into_flash());
            let expect = if keep { (7, 8) } else { (21, 20) };
            assert_eq!((log.first_index(), log.last_index()), expect);
            assert_eq!(log.term(m.index), Some(m.term));
            assert_eq!(journal.snapshot().unwrap().1, b"0123456789");
            let mut buf = [0u8; 4];
            assert_eq!(
                journal.snapshot_chunk(m.index, 8, &mut buf),
                Some((2, true))
            );
            assert_eq!(&buf[..2], b"89");
            assert_eq!(journal.snapshot_chunk(m.index, 10, &mut buf), None);
            assert_eq!(journal.snapshot_chunk(m.index + 1, 0, &mut buf), None);
            let next = log.last_index() + 1;
            let e = [entry(next, 5, b"after")];
            journal.persist(&batch(&e)).unwrap();
            let (_, log) = reopen(journal.into_flash());
            assert_eq!(log.entry(next).unwrap().data, b"after");
        }
    }

    #[test]
    fn a_snapshot_it_has_no_bytes_of_or_too_large_is_refused() {
        let mut log = Log::new();
        let mut journal = Journal::open(RamFlash::new(), &mut log).unwrap();
        let m = meta(5, 1);
        let installed = Batch {
            snapshot: Some(SnapshotWrite::Installed(&m)),
            ..batch(&[])
        };
        assert_eq!(journal.persist(&installed), Err(StorageError::OutOfRange));
        let taken = Batch {
            snapshot: Some(SnapshotWrite::Taken(&m)),
            ..batch(&[])
        };
        assert_eq!(journal.persist(&taken), Err(StorageError::OutOfRange));
        assert_eq!(
            journal.save_taken(5, &[0; 65]),
            Err(StorageError::EntryTooLarge)
        );
        let chunk = Batch {
            snapshot_chunk: Some(SnapshotChunkWrite {
                meta: &m,
                offset: 0,
                data: &[1; 65],
            }),
            ..batch(&[])
        };
        assert_eq!(journal.persist(&chunk), Err(StorageError::EntryTooLarge));
    }

    #[test]
    fn a_board_runs_indefinitely_with_a_snapshot_every_few_entries() {
        let mut log = Log::new();
        let mut journal = Journal::open(RamFlash::new(), &mut log).unwrap();
        journal.set_rewrite_above(1024);
        let mut store = MemStore::new();
        let mut last = 0;
        for round in 1..=300u64 {
            grow(&mut journal, &mut store, last, 3, 1);
            last += 3;
            if round % 4 == 0 {
                take(&mut journal, &mut store, last, 1, &last.to_le_bytes());
            }
            // A board takes many turns per entry: a few steps per round.
            for _ in 0..3 {
                journal.step(&memory(&store)).unwrap();
            }
            if round % 50 == 0 {
                assert_matches(&journal.flash, &store, &std::format!("round {round}"));
                let (reopened, _) = reopen(journal.into_flash());
                journal = reopened;
                journal.set_rewrite_above(1024);
            }
        }
        assert_eq!(model_state(&store).2, 900);
        assert!(journal.bank().1 > 5, "{:?}", journal.bank());
    }
}
