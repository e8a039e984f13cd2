//! The node's kept snapshot, open for reading by the host's user (a backup, an export):
//! [`Handle::open_snapshot`](super::Handle::open_snapshot).

use super::entry;
use super::handle::SnapshotRequestError;
use crate::storage::SnapshotFile;
use coracle::{Index, NodeId, Term};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// A node's kept snapshot, open: its index and term, the addresses and priorities the host
/// keeps in it, and the state machine's bytes (what its
/// [`SnapshotSource`](super::SnapshotSource) wrote) as a [`Read`](io::Read) over the file,
/// a piece at a time. The read that reaches the end fails with
/// [`io::ErrorKind::InvalidData`] if the file is damaged (its checksum is checked as it is
/// read). The node may keep a newer snapshot meanwhile: this one stays
/// readable, whole, until it is dropped.
#[derive(Debug)]
pub struct KeptSnapshot {
    file: SnapshotFile,
    book: entry::HostBook,
}

impl KeptSnapshot {
    /// Opens the kept snapshot of the data directory `dir` (`None`: there is none).
    pub(crate) fn open(dir: &Path) -> Result<Option<KeptSnapshot>, SnapshotRequestError> {
        let unreadable =
            |e: &dyn std::fmt::Display| SnapshotRequestError::Unreadable(e.to_string());
        let Some(mut file) = SnapshotFile::open_kept(dir).map_err(|e| unreadable(&e))? else {
            return Ok(None);
        };
        let book = entry::open_snapshot(&mut file).map_err(|e| unreadable(&e))?;
        Ok(Some(KeptSnapshot { file, book }))
    }

    /// Every entry through this index is applied in the state.
    pub fn index(&self) -> Index {
        self.file.point().0
    }

    /// The term of the entry at [`index`](Self::index).
    pub fn term(&self) -> Term {
        self.file.point().1
    }

    /// Where the members listen, as the host's log had recorded it at the snapshot.
    pub fn addresses(&self) -> &BTreeMap<NodeId, String> {
        &self.book.addresses
    }

    /// The election priorities the host's log had recorded at the snapshot.
    pub fn priorities(&self) -> &BTreeMap<NodeId, u8> {
        &self.book.priorities
    }

    /// Bytes of the state machine's snapshot not read yet (all of them before the first
    /// read).
    pub fn remaining(&self) -> u64 {
        self.file.remaining()
    }
}

impl io::Read for KeptSnapshot {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}
