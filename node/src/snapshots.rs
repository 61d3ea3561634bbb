//! The application snapshots a node keeps on disk (design notes §48): the
//! last [`KEEP`] its application took, each a state file and the node's
//! signed manifest of it, in `DATA_DIR/snapshots`. Served to peers chunk by
//! chunk over the client API; read back when the node's own application
//! must be restored.

use bftd_protocol::snapshot::{SnapshotAttestation, SnapshotManifest};
use bftd_protocol::{codec, SeqNum};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Snapshots kept: the newest, and the one before it for a peer still
/// fetching it when the newest arrives.
pub const KEEP: usize = 2;

/// A node's snapshots.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// Held snapshots, oldest first.
    held: Mutex<Vec<SnapshotAttestation>>,
}

/// Why a snapshot could not be kept or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotStoreError {
    /// A file could not be written or read.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A state file does not match its manifest (a damaged disk).
    #[error("snapshot {path} does not match its manifest: {reason}")]
    Damaged {
        /// The state file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotStoreError + '_ {
    move |source| SnapshotStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SnapshotStore {
    /// Opens (creating it if needed) the snapshot directory under
    /// `data_dir`. Leftovers of a write a crash interrupted are removed; a
    /// manifest that cannot be decoded is skipped with a warning.
    pub fn open(data_dir: &Path) -> Result<SnapshotStore, SnapshotStoreError> {
        let dir = data_dir.join("snapshots");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut held = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("tmp") => {
                    let _ = std::fs::remove_file(&path);
                }
                Some("manifest") => {
                    let bytes = std::fs::read(&path).map_err(io(&path))?;
                    match codec::decode::<SnapshotAttestation>(&bytes) {
                        Ok(attestation) => held.push(attestation),
                        Err(error) => {
                            tracing::warn!(path = %path.display(), %error, "unreadable snapshot manifest skipped")
                        }
                    }
                }
                _ => {}
            }
        }
        held.sort_by_key(|attestation| attestation.manifest.height);
        Ok(SnapshotStore {
            dir,
            held: Mutex::new(held),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SnapshotAttestation>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state_path(&self, height: SeqNum) -> PathBuf {
        self.dir.join(format!("{:020}.state", height.0))
    }

    fn manifest_path(&self, height: SeqNum) -> PathBuf {
        self.dir.join(format!("{:020}.manifest", height.0))
    }

    /// The snapshots held, oldest first.
    pub fn held(&self) -> Vec<SnapshotAttestation> {
        self.lock().clone()
    }

    /// The newest snapshot held, if any.
    pub fn newest(&self) -> Option<SnapshotAttestation> {
        self.lock().last().cloned()
    }

    /// Keeps `state` under `attestation`: the state file first, then the
    /// manifest, each written whole and synced before it is renamed into
    /// place (a crash leaves either the snapshot or nothing); then forgets
    /// all but the newest [`KEEP`].
    pub fn save(
        &self,
        attestation: SnapshotAttestation,
        state: &[u8],
    ) -> Result<(), SnapshotStoreError> {
        let height = attestation.manifest.height;
        let manifest =
            codec::encode(&attestation).map_err(|error| SnapshotStoreError::Damaged {
                path: self.manifest_path(height),
                reason: error.to_string(),
            })?;
        write_whole(&self.state_path(height), state)?;
        write_whole(&self.manifest_path(height), &manifest)?;
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        let forgotten = {
            let mut held = self.lock();
            held.retain(|held| held.manifest.height != height);
            held.push(attestation);
            held.sort_by_key(|attestation| attestation.manifest.height);
            let excess = held.len().saturating_sub(KEEP);
            held.drain(..excess).collect::<Vec<_>>()
        };
        for old in forgotten {
            let _ = std::fs::remove_file(self.manifest_path(old.manifest.height));
            let _ = std::fs::remove_file(self.state_path(old.manifest.height));
        }
        Ok(())
    }

    /// Chunk `index` of the snapshot at `height`, if it is held and has
    /// that chunk. Reads one chunk, never the whole state.
    pub fn chunk(&self, height: SeqNum, index: u32) -> Result<Option<Vec<u8>>, SnapshotStoreError> {
        let Some(manifest) = self.manifest_at(height) else {
            return Ok(None);
        };
        let Ok(range) = manifest.chunk_range(index) else {
            return Ok(None);
        };
        let path = self.state_path(height);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            // Forgotten since the manifest was looked up.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io(&path)(error)),
        };
        file.seek(SeekFrom::Start(range.start)).map_err(io(&path))?;
        let mut bytes = vec![0; (range.end - range.start) as usize];
        file.read_exact(&mut bytes).map_err(io(&path))?;
        Ok(Some(bytes))
    }

    /// The whole state of the snapshot at `height`, checked against its
    /// manifest.
    pub fn state(&self, height: SeqNum) -> Result<Option<Vec<u8>>, SnapshotStoreError> {
        let Some(manifest) = self.manifest_at(height) else {
            return Ok(None);
        };
        let path = self.state_path(height);
        let state = std::fs::read(&path).map_err(io(&path))?;
        let damaged = |reason: String| SnapshotStoreError::Damaged {
            path: path.clone(),
            reason,
        };
        if state.len() as u64 != manifest.size {
            return Err(damaged(format!(
                "{} bytes, the manifest says {}",
                state.len(),
                manifest.size
            )));
        }
        for index in 0..manifest.chunks.len() as u32 {
            let range = manifest
                .chunk_range(index)
                .map_err(|error| damaged(error.to_string()))?;
            let chunk = state
                .get(range.start as usize..range.end as usize)
                .unwrap_or_default();
            manifest
                .check_chunk(index, chunk)
                .map_err(|error| damaged(error.to_string()))?;
        }
        Ok(Some(state))
    }

    fn manifest_at(&self, height: SeqNum) -> Option<SnapshotManifest> {
        self.lock()
            .iter()
            .find(|held| held.manifest.height == height)
            .map(|held| held.manifest.clone())
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), SnapshotStoreError> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(bytes).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftd_crypto::{Digest, KeyPair};
    use bftd_protocol::snapshot::SNAPSHOT_CHUNK_BYTES;
    use bftd_protocol::NodeId;

    fn snapshot(height: u64, size: usize) -> (SnapshotAttestation, Vec<u8>) {
        let state: Vec<u8> = (0..size).map(|i| (i * 7 + height as usize) as u8).collect();
        let manifest =
            SnapshotManifest::of(SeqNum(height), Digest([height as u8; 32]), &state).unwrap();
        let key = KeyPair::from_seed([1; 32]);
        (SnapshotAttestation::sign(manifest, NodeId(0), &key), state)
    }

    /// Saved snapshots are served by chunk and whole, survive a reopen, and
    /// only the newest `KEEP` are kept.
    #[test]
    fn keeps_the_newest_snapshots_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert!(store.newest().is_none());
        for height in [64, 128, 192] {
            let (attestation, state) = snapshot(height, SNAPSHOT_CHUNK_BYTES + 3);
            store.save(attestation, &state).unwrap();
        }
        let heights = |store: &SnapshotStore| {
            store
                .held()
                .iter()
                .map(|held| held.manifest.height.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(heights(&store), vec![128, 192]);
        assert_eq!(store.chunk(SeqNum(64), 0).unwrap(), None, "forgotten");
        let (_, state) = snapshot(192, SNAPSHOT_CHUNK_BYTES + 3);
        assert_eq!(
            store.chunk(SeqNum(192), 1).unwrap().unwrap(),
            state[SNAPSHOT_CHUNK_BYTES..]
        );
        assert_eq!(store.chunk(SeqNum(192), 2).unwrap(), None);
        // A crash mid-write leaves a temporary file, which a reopen removes.
        std::fs::write(
            dir.path().join("snapshots/00000000000000000256.state.tmp"),
            b"x",
        )
        .unwrap();
        let reopened = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(heights(&reopened), vec![128, 192]);
        assert_eq!(reopened.state(SeqNum(192)).unwrap().unwrap(), state);
        assert_eq!(
            std::fs::read_dir(dir.path().join("snapshots"))
                .unwrap()
                .count(),
            4,
            "two states, two manifests"
        );
    }

    /// A state file damaged on disk is refused when read whole, not handed
    /// to the application.
    #[test]
    fn a_damaged_state_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let (attestation, mut state) = snapshot(64, 1000);
        store.save(attestation, &state).unwrap();
        state[500] ^= 1;
        std::fs::write(store.state_path(SeqNum(64)), &state).unwrap();
        assert!(matches!(
            store.state(SeqNum(64)),
            Err(SnapshotStoreError::Damaged { .. })
        ));
    }
}
