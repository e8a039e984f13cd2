//! Seeding a new data directory with a snapshot (a restore from a backup): the directory is
//! initialised as a new node's would be, then the snapshot is made its kept snapshot and
//! the hard state takes the snapshot's term, so the first open finds what a node that
//! installed the snapshot from a leader and crashed before writing anything else would
//! leave: the log starts after the snapshot.

use super::error::{io_err, FileLogError};
use super::{hard_state, snapshot, FileLog, Options};
use coracle::{HardState, SnapshotMeta};
use std::io::Read;
use std::path::Path;

impl FileLog {
    /// Initialises the data directory `dir`, which must be new (missing or empty), with
    /// the snapshot `meta` whose data `data` streams: its identity is the cluster and node
    /// of `options` ([`Options::member`]), its hard state the snapshot's term and no vote.
    /// On an error, the files written are removed again (the directory is left as it was
    /// found, created or not).
    pub fn seed(
        dir: &Path,
        options: Options,
        meta: &SnapshotMeta,
        data: &mut dyn Read,
    ) -> Result<(), FileLogError> {
        let existed = dir.exists();
        if existed {
            let mut entries = std::fs::read_dir(dir).map_err(io_err(dir, "list"))?;
            if entries.next().is_some() {
                return Err(FileLogError::NotEmpty(dir.to_path_buf()));
            }
        }
        let seeded = Self::seed_new(dir, options, meta, data);
        if seeded.is_err() {
            if existed {
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for e in entries.flatten() {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            } else {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        seeded
    }

    fn seed_new(
        dir: &Path,
        options: Options,
        meta: &SnapshotMeta,
        data: &mut dyn Read,
    ) -> Result<(), FileLogError> {
        drop(FileLog::open_with(dir, options.clone())?);
        let mut writer = snapshot::Writer::create(dir, meta)?;
        std::io::copy(data, &mut writer).map_err(io_err(dir, "write the snapshot"))?;
        let tmp = writer.finish()?;
        let kept = dir.join(snapshot::FILE);
        std::fs::rename(&tmp, &kept).map_err(io_err(&tmp, "rename into place"))?;
        super::dir::sync_dir(dir)?;
        hard_state::write(
            dir,
            HardState {
                current_term: meta.term,
                voted_for: None,
            },
        )?;
        // Opened again as the node will open it: the log now starts after the snapshot.
        let log = FileLog::open_with(dir, options)?;
        log.check_complete()?;
        debug_assert_eq!(log.snapshot_point(), Some((meta.index, meta.term)));
        debug_assert_eq!(log.last_index(), meta.index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("coracle-seed-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_seeded_directory_opens_with_the_snapshot_and_its_term() {
        let d = dir("ok");
        let meta = SnapshotMeta::new(40, 3, &[]).unwrap();
        let options = Options::new().member(8, 2);
        FileLog::seed(&d, options.clone(), &meta, &mut &b"state"[..]).unwrap();
        let log = FileLog::open_with(&d, options).unwrap();
        assert_eq!(log.snapshot_point(), Some((40, 3)));
        assert_eq!(log.last_index(), 40);
        assert_eq!(log.hard_state().current_term, 3);
        assert_eq!(log.hard_state().voted_for, None);
        assert_eq!((log.identity().cluster, log.identity().node), (8, 2));
        assert_eq!(log.snapshot().unwrap().size, 5);
        drop(log);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_directory_with_anything_in_it_is_not_seeded_nor_changed() {
        let d = dir("full");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("other"), b"x").unwrap();
        let meta = SnapshotMeta::new(40, 3, &[]).unwrap();
        let e = FileLog::seed(&d, Options::new(), &meta, &mut &b"state"[..]).unwrap_err();
        assert!(matches!(e, FileLogError::NotEmpty(_)), "{e}");
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("other")]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_seed_leaves_no_directory_behind() {
        let d = dir("fail");
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("the source broke"))
            }
        }
        let meta = SnapshotMeta::new(40, 3, &[]).unwrap();
        assert!(FileLog::seed(&d, Options::new(), &meta, &mut Failing).is_err());
        assert!(!d.exists());
    }
}
