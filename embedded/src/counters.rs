//! The replicated state machine of the boards: a table of named counters in
//! `heapless` storage, changed by `add` commands carried in log entries.
//!
//! A command is 6 bytes: `b'+'`, the counter's name (one byte) and a signed
//! delta (i32, little-endian). Every board applies the same committed
//! entries in the same order, so every board holds the same table at the
//! same index; [`CounterTable::digest`] condenses it to 32 bits so boards
//! (and the QEMU cluster check) can compare states in a log line.
//!
//! ```
//! use coracle::{Entry, EntryKind};
//! use coracle_embedded::counters::{Add, CounterTable};
//!
//! let mut table: CounterTable<8> = CounterTable::new();
//! let command = Add { counter: 3, delta: 2 }.encode();
//! table.apply(&Entry { index: 1, term: 1, kind: EntryKind::Command, data: &command });
//! assert_eq!(table.get(3), 2);
//! assert_eq!(table.applied(), 1);
//! ```

use core::fmt;

use coracle::{Entry, EntryKind, Index};

/// Length of an encoded [`Add`] command.
pub const ADD_LEN: usize = 6;

/// `counter += delta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Add {
    /// Name of the counter.
    pub counter: u8,
    /// What to add (wrapping).
    pub delta: i32,
}

/// Why a command was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// Not an `add` command of 6 bytes.
    Malformed,
    /// The table has no room for another counter.
    TableFull,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed counter command",
            Self::TableFull => "counter table is full",
        })
    }
}

impl Add {
    /// The command's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; ADD_LEN] {
        let d = self.delta.to_le_bytes();
        [b'+', self.counter, d[0], d[1], d[2], d[3]]
    }

    /// Parses a command.
    ///
    /// # Errors
    /// [`CommandError::Malformed`] unless `bytes` is an encoded [`Add`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        match *bytes {
            [b'+', counter, a, b, c, d] => Ok(Self {
                counter,
                delta: i32::from_le_bytes([a, b, c, d]),
            }),
            _ => Err(CommandError::Malformed),
        }
    }
}

/// Up to `N` counters, the index applied last, and how many commands were
/// applied and refused.
#[derive(Clone, Debug, Default)]
pub struct CounterTable<const N: usize> {
    values: heapless::LinearMap<u8, i64, N>,
    applied: Index,
    commands: u64,
    refused: u64,
}

impl<const N: usize> CounterTable<N> {
    /// An empty table at index 0.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            values: heapless::LinearMap::new(),
            applied: 0,
            commands: 0,
            refused: 0,
        }
    }

    /// Applies a committed entry (entries come in index order, each once).
    /// No-op and membership entries only advance the applied index; a
    /// command that cannot apply is counted in [`CounterTable::refused`]
    /// (deterministically on every board, so states still agree).
    ///
    /// # Errors
    /// Why a command entry was refused.
    pub fn apply(&mut self, entry: &Entry<'_>) -> Result<(), CommandError> {
        self.applied = entry.index;
        if entry.kind != EntryKind::Command {
            return Ok(());
        }
        let result = Add::decode(entry.data).and_then(|add| {
            let old = self.get(add.counter);
            self.values
                .insert(add.counter, old.wrapping_add(i64::from(add.delta)))
                .map(|_| ())
                .map_err(|_| CommandError::TableFull)
        });
        match result {
            Ok(()) => self.commands += 1,
            Err(_) => self.refused += 1,
        }
        result
    }

    /// The value of `counter` (0 if never added to).
    #[must_use]
    pub fn get(&self, counter: u8) -> i64 {
        self.values.get(&counter).copied().unwrap_or(0)
    }

    /// The index applied last.
    #[must_use]
    pub const fn applied(&self) -> Index {
        self.applied
    }

    /// Commands applied.
    #[must_use]
    pub const fn commands(&self) -> u64 {
        self.commands
    }

    /// Commands refused.
    #[must_use]
    pub const fn refused(&self) -> u64 {
        self.refused
    }

    /// Bytes of [`CounterTable::encode`]: fixed for a table of `N`
    /// counters (the applied index, the command counts, the number of
    /// counters, and `N` slots of name and value).
    pub const ENCODED_LEN: usize = 25 + 9 * N;

    /// The table as a snapshot: [`CounterTable::ENCODED_LEN`] bytes into
    /// `out`, counters in name order, unused slots zero. Returns the length.
    ///
    /// # Errors
    /// [`CommandError::TableFull`] if `out` is shorter than
    /// [`CounterTable::ENCODED_LEN`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, CommandError> {
        let out = out
            .get_mut(..Self::ENCODED_LEN)
            .ok_or(CommandError::TableFull)?;
        out.fill(0);
        out[..8].copy_from_slice(&self.applied.to_le_bytes());
        out[8..16].copy_from_slice(&self.commands.to_le_bytes());
        out[16..24].copy_from_slice(&self.refused.to_le_bytes());
        out[24] = self.values.len() as u8;
        let mut at = 25;
        for name in 0..=u8::MAX {
            if let Some(value) = self.values.get(&name) {
                out[at] = name;
                out[at + 1..at + 9].copy_from_slice(&value.to_le_bytes());
                at += 9;
            }
        }
        Ok(Self::ENCODED_LEN)
    }

    /// A table from a snapshot made by [`CounterTable::encode`].
    ///
    /// # Errors
    /// [`CommandError::Malformed`] unless `bytes` is such a snapshot of a
    /// table of at most `N` counters.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        let count = usize::from(*bytes.get(24).ok_or(CommandError::Malformed)?);
        if count > N || bytes.len() < 25 + 9 * count {
            return Err(CommandError::Malformed);
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            b
        };
        let mut table = Self {
            values: heapless::LinearMap::new(),
            applied: u64::from_le_bytes(u64_at(0)),
            commands: u64::from_le_bytes(u64_at(8)),
            refused: u64::from_le_bytes(u64_at(16)),
        };
        for slot in 0..count {
            let at = 25 + 9 * slot;
            let value = i64::from_le_bytes(u64_at(at + 1));
            if table.values.insert(bytes[at], value).is_err() {
                return Err(CommandError::Malformed);
            }
        }
        Ok(table)
    }

    /// FNV-1a over the counters in name order, the command counts and the
    /// applied index: equal tables at equal indexes have equal digests.
    #[must_use]
    pub fn digest(&self) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                hash ^= u32::from(b);
                hash = hash.wrapping_mul(0x0100_0193);
            }
        };
        feed(&self.applied.to_le_bytes());
        feed(&self.commands.to_le_bytes());
        feed(&self.refused.to_le_bytes());
        for name in 0..=u8::MAX {
            if let Some(value) = self.values.get(&name) {
                feed(&[name]);
                feed(&value.to_le_bytes());
            }
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(index: Index, data: &[u8]) -> Entry<'_> {
        Entry {
            index,
            term: 1,
            kind: EntryKind::Command,
            data,
        }
    }

    #[test]
    fn a_snapshot_round_trips_and_garbage_is_refused() {
        let mut t: CounterTable<4> = CounterTable::new();
        for (i, name) in [3u8, 1, 3, 2].into_iter().enumerate() {
            let add = Add {
                counter: name,
                delta: 5,
            }
            .encode();
            t.apply(&command(i as u64 + 1, &add)).unwrap();
        }
        let mut buf = [0u8; CounterTable::<4>::ENCODED_LEN];
        assert_eq!(t.encode(&mut buf), Ok(buf.len()));
        let back = CounterTable::<4>::decode(&buf).unwrap();
        assert_eq!(back.digest(), t.digest());
        assert_eq!((back.get(3), back.applied(), back.commands()), (10, 4, 4));
        assert!(t.encode(&mut [0u8; 8]).is_err());
        assert!(CounterTable::<4>::decode(&buf[..20]).is_err());
        assert!(CounterTable::<1>::decode(&buf).is_err());
    }

    #[test]
    fn add_round_trips() {
        let add = Add {
            counter: 7,
            delta: -5,
        };
        assert_eq!(Add::decode(&add.encode()), Ok(add));
        assert_eq!(Add::decode(b"+1"), Err(CommandError::Malformed));
        assert_eq!(Add::decode(b"-abcde"), Err(CommandError::Malformed));
    }

    #[test]
    fn same_entries_same_digest_in_any_insertion_order_of_names() {
        let mut a: CounterTable<4> = CounterTable::new();
        let mut b: CounterTable<4> = CounterTable::new();
        let x = Add {
            counter: 1,
            delta: 3,
        }
        .encode();
        let y = Add {
            counter: 2,
            delta: 4,
        }
        .encode();
        a.apply(&command(1, &x)).unwrap();
        a.apply(&command(2, &y)).unwrap();
        b.apply(&command(1, &x)).unwrap();
        assert_ne!(a.digest(), b.digest());
        b.apply(&command(2, &y)).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!((a.get(1), a.get(2), a.commands()), (3, 4, 2));
    }

    #[test]
    fn bad_commands_and_a_full_table_are_counted_not_panics() {
        let mut t: CounterTable<1> = CounterTable::new();
        assert_eq!(t.apply(&command(1, b"junk")), Err(CommandError::Malformed));
        let a = Add {
            counter: 1,
            delta: 1,
        }
        .encode();
        let b = Add {
            counter: 2,
            delta: 1,
        }
        .encode();
        t.apply(&command(2, &a)).unwrap();
        assert_eq!(t.apply(&command(3, &b)), Err(CommandError::TableFull));
        t.apply(&Entry {
            index: 4,
            term: 2,
            kind: EntryKind::Noop,
            data: &[],
        })
        .unwrap();
        assert_eq!((t.applied(), t.commands(), t.refused()), (4, 1, 2));
    }
}
