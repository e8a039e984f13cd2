//! What the host writes into the log and snapshots around the state machine's bytes: a
//! kind byte before every command entry, and the host's part at the start of a snapshot.

use coracle::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::io;

/// The kind byte of a command for the state machine (`C`). Not 0 or 1: those start every
/// command entry of the builds before this format (the KV store's own commands), which are
/// refused with a message instead of being misread.
const KIND_COMMAND: u8 = b'C';
/// The kind byte of a [`HostRecord`] (`H`).
const KIND_HOST: u8 = b'H';

/// The start of a snapshot file's host part.
const SNAPSHOT_MAGIC: &[u8; 8] = b"CRCLHST1";

/// Largest host part of a snapshot read back (addresses of at most a few hundred members).
const MAX_SNAPSHOT_HEAD: u32 = 1 << 20;

/// An entry the host itself proposes (variants are only ever appended).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostRecord {
    /// Node `id` listens at `addr` (`ip:port`), so every node reaches a member added later.
    Address {
        /// The node.
        id: NodeId,
        /// Its address.
        addr: String,
    },
    /// Node `id` has election priority `priority` (`Config::priority`), on every node.
    Priority {
        /// The node.
        id: NodeId,
        /// Its priority.
        priority: u8,
    },
}

/// What the host keeps about the members beside the configuration: replicated through
/// [`HostRecord`]s, carried in snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostBook {
    /// Where each member listens (`ip:port`).
    pub addresses: BTreeMap<NodeId, String>,
    /// The election priorities set (a member absent here has priority 0, or its own
    /// node.toml's until it announces it).
    pub priorities: BTreeMap<NodeId, u8>,
}

/// A command entry's data, split by its kind byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoggedCommand<'a> {
    /// A command for the state machine, as proposed.
    Command(&'a [u8]),
    /// A record of the host's.
    Host(HostRecord),
}

/// A command entry or snapshot that is not in the host's format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryError {
    /// A command entry without even its kind byte.
    Empty,
    /// A kind byte this build does not know (written by a newer one?).
    UnknownKind(u8),
    /// An entry written by a build from before the host's format (the KV store's commands
    /// without a kind byte): this build cannot read that data directory.
    Legacy,
    /// A host record or a snapshot's host part that does not decode.
    Malformed(String),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryError::Empty => f.write_str("a command entry without its kind byte"),
            EntryError::UnknownKind(k) => write!(
                f,
                "a command entry of unknown kind {k} (written by a newer build?)"
            ),
            EntryError::Legacy => f.write_str(
                "a command entry written by a build from before the host's log format; \
                 this build cannot read this data directory (start the node on a new one)",
            ),
            EntryError::Malformed(m) => write!(f, "malformed host data: {m}"),
        }
    }
}

impl std::error::Error for EntryError {}

/// Splits a command entry's data into its kind and contents.
///
/// ```
/// use coracle_quic::host::{split_entry, LoggedCommand};
/// assert_eq!(split_entry(b"Cxy"), Ok(LoggedCommand::Command(b"xy")));
/// assert!(split_entry(&[]).is_err());
/// ```
pub fn split_entry(data: &[u8]) -> Result<LoggedCommand<'_>, EntryError> {
    match data.split_first() {
        None => Err(EntryError::Empty),
        Some((&KIND_COMMAND, rest)) => Ok(LoggedCommand::Command(rest)),
        Some((&KIND_HOST, rest)) => postcard::from_bytes(rest)
            .map(LoggedCommand::Host)
            .map_err(|e| EntryError::Malformed(e.to_string())),
        Some((0 | 1, _)) => Err(EntryError::Legacy),
        Some((&k, _)) => Err(EntryError::UnknownKind(k)),
    }
}

/// `command` as the log carries it, written into `out` (cleared first).
pub(crate) fn command_entry(out: &mut Vec<u8>, command: &[u8]) {
    out.clear();
    out.reserve(1 + command.len());
    out.push(KIND_COMMAND);
    out.extend_from_slice(command);
}

/// `record` as the log carries it.
pub(crate) fn record_entry(record: &HostRecord) -> Vec<u8> {
    // A record of an id and a string always encodes.
    postcard::to_extend(record, vec![KIND_HOST]).unwrap_or_else(|_| vec![KIND_HOST])
}

#[derive(Serialize, Deserialize)]
struct SnapshotHead {
    addresses: Vec<(NodeId, String)>,
}

/// The host's part of a snapshot: a magic, its length (4 bytes, little-endian), the
/// addresses of the members learned from the log, then their priorities (after the
/// addresses, so a build that knows none reads the addresses as before and ignores them).
pub(crate) fn snapshot_head(book: &HostBook) -> Vec<u8> {
    let head = SnapshotHead {
        addresses: book
            .addresses
            .iter()
            .map(|(&i, a)| (i, a.clone()))
            .collect(),
    };
    let mut body = postcard::to_allocvec(&head).unwrap_or_default();
    if !book.priorities.is_empty() {
        let priorities: Vec<(NodeId, u8)> = book.priorities.iter().map(|(&i, &p)| (i, p)).collect();
        body = postcard::to_extend(&priorities, body).unwrap_or_default();
    }
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads the host's part of a snapshot from `source` and returns the addresses and
/// priorities it holds; `source` is left at the state machine's bytes.
///
/// ```no_run
/// # fn f(mut file: std::fs::File) -> Result<(), Box<dyn std::error::Error>> {
/// let book = coracle_quic::host::open_snapshot(&mut file)?;
/// // `file` now reads what the state machine's SnapshotSource wrote.
/// # Ok(()) }
/// ```
pub fn open_snapshot(source: &mut dyn io::Read) -> Result<HostBook, EntryError> {
    let bad = |e: io::Error| EntryError::Malformed(format!("snapshot host part: {e}"));
    let mut magic = [0u8; 8];
    source.read_exact(&mut magic).map_err(bad)?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(EntryError::Malformed(
            "not a snapshot of this host's format".into(),
        ));
    }
    let mut len = [0u8; 4];
    source.read_exact(&mut len).map_err(bad)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_SNAPSHOT_HEAD {
        return Err(EntryError::Malformed(format!(
            "snapshot host part of {len} bytes"
        )));
    }
    let mut body = vec![0u8; len as usize];
    source.read_exact(&mut body).map_err(bad)?;
    let malformed = |e: postcard::Error| EntryError::Malformed(e.to_string());
    let (head, rest) = postcard::take_from_bytes::<SnapshotHead>(&body).map_err(malformed)?;
    let priorities: Vec<(NodeId, u8)> = match rest {
        [] => Vec::new(),
        rest => postcard::from_bytes(rest).map_err(malformed)?,
    };
    Ok(HostBook {
        addresses: head.addresses.into_iter().collect(),
        priorities: priorities.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_commands_round_trip() {
        let record = HostRecord::Address {
            id: 4,
            addr: "127.0.0.1:7004".into(),
        };
        let data = record_entry(&record);
        assert_eq!(split_entry(&data), Ok(LoggedCommand::Host(record)));
        let mut out = vec![9, 9];
        command_entry(&mut out, b"xy");
        assert_eq!(split_entry(&out), Ok(LoggedCommand::Command(b"xy")));
        assert_eq!(split_entry(&[7]), Err(EntryError::UnknownKind(7)));
        assert_eq!(split_entry(&[0, 7]), Err(EntryError::Legacy));
        assert_eq!(split_entry(&[1, 7]), Err(EntryError::Legacy));
        let priority = HostRecord::Priority { id: 2, priority: 9 };
        assert_eq!(
            split_entry(&record_entry(&priority)),
            Ok(LoggedCommand::Host(priority))
        );
        assert!(matches!(
            split_entry(&[KIND_HOST, 200]),
            Err(EntryError::Malformed(_))
        ));
    }

    #[test]
    fn the_snapshot_head_is_read_back_and_garbage_refused() {
        let mut book = HostBook::default();
        book.addresses.insert(4, "127.0.0.1:7004".to_string());
        // A head without priorities (as the builds before them wrote it) reads back.
        let mut plain = snapshot_head(&book);
        plain.extend_from_slice(b"state");
        assert_eq!(open_snapshot(&mut &plain[..]), Ok(book.clone()));
        book.priorities.insert(4, 7);
        let mut bytes = snapshot_head(&book);
        bytes.extend_from_slice(b"state");
        let mut r = &bytes[..];
        assert_eq!(open_snapshot(&mut r), Ok(book));
        assert_eq!(r, b"state");
        for cut in 0..bytes.len() - 5 {
            assert!(open_snapshot(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = SNAPSHOT_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(open_snapshot(&mut &huge[..]).is_err());
        assert!(open_snapshot(&mut &b"garbage garbage"[..]).is_err());
    }
}
