//! Raft log, vote and state machine persisted in one redb file.
//!
//! The log store writes with `Durability::Immediate` (fsync) before it signals openraft's flush
//! callback, so an acknowledged entry survives a crash. The state machine lives in memory and
//! reaches the disk with each snapshot (every `raft.snapshot_after` entries, durably); after a
//! restart openraft applies the committed entries after the snapshot again. Writing the whole
//! state after every applied batch, as earlier versions did, made every write cost as much as
//! the state is large and held redb's single writer against log appends, so a follower with a
//! large history answered AppendEntries too slowly to ever catch up. On open, the newer of the
//! persisted state machine (written by earlier versions and at snapshot installs) and the
//! persisted snapshot wins. All disk work runs on tokio's blocking pool.

// openraft's trait signatures fix the error type to its (large) StorageError; the helpers here
// share it so that `?` works throughout.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::TypeConfig;
use crate::model::{Applied, Member, NodeId, State};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_STATE: &str = "state";
/// The latest snapshot as one JSON value with its bytes as a number array (older stores; read,
/// never written).
const KEY_SNAPSHOT_LEGACY: &str = "snapshot";
/// The latest snapshot's metadata (JSON) and its bytes (as they are).
const KEY_SNAPSHOT_META: &str = "snapshot.meta";
const KEY_SNAPSHOT_DATA: &str = "snapshot.data";

/// The file name of the store inside the data directory.
pub const DB_FILE: &str = "clusterd.redb";

fn any<E: std::error::Error + 'static>(e: E) -> AnyError {
    AnyError::new(&e)
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::read(any(e)).into()
}

fn write_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write(any(e)).into()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    // A simulation runs everything on its one thread, in order (see `crate::clock`).
    if crate::clock::simulated() {
        return f();
    }
    tokio::task::spawn_blocking(f).await.map_err(write_err)?
}

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// redb refused the file.
    #[error(
        "cannot open the Raft store {path}: {source} (is another clusterd using this data_dir?)"
    )]
    Database {
        /// The file.
        path: String,
        /// Cause.
        source: redb::DatabaseError,
    },
    /// The file holds data we cannot read.
    #[error("the Raft store {path} is unreadable: {source}")]
    Corrupt {
        /// The file.
        path: String,
        /// Cause.
        source: Box<StorageError<NodeId>>,
    },
}

/// Open (or create) the store in `data_dir`, returning the log store, the state machine and a
/// receiver that sees every applied state.
pub fn open(
    data_dir: &Path,
    history_limit: usize,
) -> Result<(LogStore, StateMachineStore, watch::Receiver<Arc<Replica>>), OpenError> {
    std::fs::create_dir_all(data_dir).map_err(|source| OpenError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let path = data_dir.join(DB_FILE);
    let db = Database::create(&path).map_err(|source| OpenError::Database {
        path: path.display().to_string(),
        source,
    })?;
    let db = Arc::new(db);
    let corrupt = |source| OpenError::Corrupt {
        path: path.display().to_string(),
        source: Box::new(source),
    };
    init_tables(&db).map_err(corrupt)?;
    let mut data = load_state_machine(&db).map_err(corrupt)?;
    data.state.history_limit = history_limit.max(1);
    let (tx, rx) = watch::channel(Arc::new(Replica::from(&data)));
    Ok((
        LogStore { db: db.clone() },
        StateMachineStore {
            db,
            data,
            published: tx,
            snapshot_seq: 0,
        },
        rx,
    ))
}

fn init_tables(db: &Database) -> StorageResult<()> {
    let txn = db.begin_write().map_err(write_err)?;
    txn.open_table(LOG).map_err(write_err)?;
    txn.open_table(META).map_err(write_err)?;
    txn.open_table(SM).map_err(write_err)?;
    txn.commit().map_err(write_err)
}

fn get_json<T: for<'a> Deserialize<'a>>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> StorageResult<Option<T>> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(table).map_err(read_err)?;
    match table.get(key).map_err(read_err)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(read_err),
    }
}

fn put_json<T: Serialize>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    items: &[(&str, &T)],
    durability: Durability,
) -> StorageResult<()> {
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(durability).map_err(write_err)?;
    {
        let mut t = txn.open_table(table).map_err(write_err)?;
        for (key, value) in items {
            let bytes = serde_json::to_vec(value).map_err(write_err)?;
            t.insert(*key, bytes.as_slice()).map_err(write_err)?;
        }
    }
    txn.commit().map_err(write_err)
}

/// Log and vote storage.
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// A handle on the database file, so that the daemon can close it itself at shutdown (the
    /// file is closed when the last handle is dropped, and dropping it flushes).
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let db = self.db.clone();
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        blocking(move || {
            let txn = db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            for item in table.range::<u64>((start, end)).map_err(read_err)? {
                let (_, v) = item.map_err(read_err)?;
                out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let db = self.db.clone();
        blocking(move || {
            let purged: Option<LogId<NodeId>> = get_json(&db, META, KEY_PURGED)?;
            let txn = db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let last = match table.last().map_err(read_err)? {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> =
                        serde_json::from_slice(v.value()).map_err(read_err)?;
                    Some(e.log_id)
                }
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || {
            put_json(&db, META, &[(KEY_VOTE, &vote)], Durability::Immediate)
                .map_err(|e| StorageIOError::write_vote(any(e)).into())
        })
        .await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        let db = self.db.clone();
        blocking(move || get_json(&db, META, KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let db = self.db.clone();
        // A hint that lets a restart apply up to here at once; durable with the next log fsync.
        blocking(move || put_json(&db, META, &[(KEY_COMMITTED, &committed)], Durability::None))
            .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let db = self.db.clone();
        blocking(move || Ok(get_json::<Option<LogId<NodeId>>>(&db, META, KEY_COMMITTED)?.flatten()))
            .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((e.log_id.index, serde_json::to_vec(&e).map_err(write_err)?));
        }
        let db = self.db.clone();
        let result = blocking(move || {
            let mut txn = db.begin_write().map_err(write_err)?;
            txn.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(write_err)?;
                for (index, bytes) in &encoded {
                    t.insert(*index, bytes.as_slice()).map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)
        })
        .await;
        // Only now, after the fsync, may openraft count these entries as persisted.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(write_err)?;
                t.retain_in::<u64, _>(log_id.index.., |_, _| false)
                    .map_err(write_err)?;
            }
            txn.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut meta = txn.open_table(META).map_err(write_err)?;
                let bytes = serde_json::to_vec(&log_id).map_err(write_err)?;
                meta.insert(KEY_PURGED, bytes.as_slice())
                    .map_err(write_err)?;
                let mut t = txn.open_table(LOG).map_err(write_err)?;
                t.retain_in::<u64, _>(..=log_id.index, |_, _| false)
                    .map_err(write_err)?;
            }
            txn.commit().map_err(write_err)
        })
        .await
    }
}

/// What the state machine persists and snapshots.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SmData {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, Member>,
    state: State,
}

/// A persisted snapshot: its metadata and the encoded [`SmData`].
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// The latest snapshot stored in `db`, in either layout.
fn get_snapshot(db: &Database) -> StorageResult<Option<StoredSnapshot>> {
    let meta: Option<SnapshotMeta<NodeId, Member>> = get_json(db, SM, KEY_SNAPSHOT_META)?;
    if let Some(meta) = meta {
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(SM).map_err(read_err)?;
        let data = table
            .get(KEY_SNAPSHOT_DATA)
            .map_err(read_err)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        return Ok(Some(StoredSnapshot { meta, data }));
    }
    get_json(db, SM, KEY_SNAPSHOT_LEGACY)
}

/// Write `snap` as the latest snapshot into `table` (its bytes as they are).
fn put_snapshot(
    table: &mut redb::Table<'_, &str, &[u8]>,
    snap: &StoredSnapshot,
) -> StorageResult<()> {
    let meta = serde_json::to_vec(&snap.meta).map_err(write_err)?;
    table
        .insert(KEY_SNAPSHOT_META, meta.as_slice())
        .map_err(write_err)?;
    table
        .insert(KEY_SNAPSHOT_DATA, snap.data.as_slice())
        .map_err(write_err)?;
    table.remove(KEY_SNAPSHOT_LEGACY).map_err(write_err)?;
    Ok(())
}

fn load_state_machine(db: &Database) -> StorageResult<SmData> {
    let persisted: Option<SmData> = get_json(db, SM, KEY_STATE)?;
    let snapshot = get_snapshot(db)?;
    let from_snapshot = match snapshot {
        Some(s) => Some(serde_json::from_slice::<SmData>(&s.data).map_err(read_err)?),
        None => None,
    };
    Ok(match (persisted, from_snapshot) {
        (Some(p), Some(s)) if s.last_applied > p.last_applied => s,
        (Some(p), _) => p,
        (None, Some(s)) => s,
        (None, None) => SmData::default(),
    })
}

/// An applied view of the cluster state, as published to readers (API, DNS, planners).
#[derive(Clone, Debug, Default)]
pub struct Replica {
    /// Index of the last applied log entry.
    pub last_applied: Option<u64>,
    /// The cluster state at that index.
    pub state: State,
}

impl From<&SmData> for Replica {
    fn from(d: &SmData) -> Self {
        Replica {
            last_applied: d.last_applied.map(|l| l.index),
            state: d.state.clone(),
        }
    }
}

/// The state machine: the model's [`State`] plus Raft bookkeeping.
#[derive(Debug)]
pub struct StateMachineStore {
    db: Arc<Database>,
    data: SmData,
    published: watch::Sender<Arc<Replica>>,
    snapshot_seq: u64,
}

impl StateMachineStore {
    fn publish(&self) {
        self.published
            .send_replace(Arc::new(Replica::from(&self.data)));
    }
}

fn membership_members(m: &StoredMembership<NodeId, Member>) -> Vec<(Member, bool)> {
    let voters: std::collections::BTreeSet<NodeId> = m.voter_ids().collect();
    m.nodes()
        .map(|(id, node)| (node.clone(), voters.contains(id)))
        .collect()
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        Ok((self.data.last_applied, self.data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.data.last_applied = Some(entry.log_id);
            let reply = match &entry.payload {
                EntryPayload::Blank => Applied::default(),
                EntryPayload::Normal(cmd) => self
                    .data
                    .state
                    .apply_entry(cmd, entry.log_id.leader_id.term),
                EntryPayload::Membership(m) => {
                    self.data.last_membership =
                        StoredMembership::new(Some(entry.log_id), m.clone());
                    let members = membership_members(&self.data.last_membership);
                    self.data.state.set_membership(members);
                    Applied {
                        changed: true,
                        refused: None,
                    }
                }
            };
            replies.push(reply);
        }
        self.publish();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            db: self.db.clone(),
            data: self.data.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let db = self.db.clone();
        let history_limit = self.data.state.history_limit;
        let meta_owned = meta.clone();
        // Parsing and writing tens of MB: off the runtime's threads, so that heartbeats and
        // votes keep flowing meanwhile.
        let data = blocking(move || {
            let mut data: SmData = serde_json::from_slice(&bytes).map_err(|e| {
                StorageError::from(StorageIOError::read_snapshot(
                    Some(meta_owned.signature()),
                    any(e),
                ))
            })?;
            data.state.history_limit = history_limit;
            data.last_applied = meta_owned.last_log_id;
            data.last_membership = meta_owned.last_membership.clone();
            let stored = StoredSnapshot {
                meta: meta_owned,
                data: bytes,
            };
            let mut txn = db.begin_write().map_err(write_err)?;
            txn.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut t = txn.open_table(SM).map_err(write_err)?;
                let state = serde_json::to_vec(&data).map_err(write_err)?;
                t.insert(KEY_STATE, state.as_slice()).map_err(write_err)?;
                put_snapshot(&mut t, &stored)?;
            }
            txn.commit().map_err(write_err)?;
            Ok(data)
        })
        .await?;
        self.data = data;
        self.publish();
        tracing::info!(
            snapshot = %meta.snapshot_id,
            last_index = ?meta.last_log_id.map(|l| l.index),
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let db = self.db.clone();
        let stored = blocking(move || get_snapshot(&db)).await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asked for a builder.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db: Arc<Database>,
    data: SmData,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let snapshot_id = match self.data.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.seq),
            None => format!("empty-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.data.last_applied,
            last_membership: self.data.last_membership.clone(),
            snapshot_id,
        };
        let db = self.db.clone();
        let data = std::mem::take(&mut self.data);
        let stored_meta = meta.clone();
        // Encoding and writing tens of MB: off the runtime's threads.
        let bytes = blocking(move || {
            let stored = StoredSnapshot {
                meta: stored_meta,
                data: serde_json::to_vec(&data).map_err(write_err)?,
            };
            let mut txn = db.begin_write().map_err(write_err)?;
            txn.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut t = txn.open_table(SM).map_err(write_err)?;
                put_snapshot(&mut t, &stored)?;
            }
            txn.commit().map_err(write_err)?;
            Ok(stored.data)
        })
        .await?;
        tracing::debug!(snapshot = %meta.snapshot_id, "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct RedbBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
        async fn build(&self) -> StorageResult<(tempfile::TempDir, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(write_err)?;
            let (log, sm, _rx) = open(dir.path(), 100).map_err(write_err)?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn a_snapshot_is_stored_as_its_bytes_and_one_in_the_older_layout_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let snap = |id: &str, data: Vec<u8>| StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: id.into(),
            },
            data,
        };
        // The older layout: one JSON value, bytes as numbers.
        put_json(
            &db,
            SM,
            &[(KEY_SNAPSHOT_LEGACY, &snap("old", vec![7, 8, 9]))],
            Durability::Immediate,
        )
        .unwrap();
        let loaded = get_snapshot(&db).unwrap().unwrap();
        assert_eq!(
            (loaded.meta.snapshot_id.as_str(), loaded.data),
            ("old", vec![7, 8, 9])
        );
        // The current layout replaces it; its bytes are stored as they are.
        let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(SM).unwrap();
            put_snapshot(&mut t, &snap("new", data.clone())).unwrap();
        }
        txn.commit().unwrap();
        let loaded = get_snapshot(&db).unwrap().unwrap();
        assert_eq!(loaded.meta.snapshot_id, "new");
        assert_eq!(loaded.data, data);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(SM).unwrap();
        assert_eq!(
            t.get(KEY_SNAPSHOT_DATA).unwrap().unwrap().value().len(),
            100_000
        );
        assert!(t.get(KEY_SNAPSHOT_LEGACY).unwrap().is_none());
    }

    #[test]
    fn redb_store_passes_openraft_storage_suite() -> StorageResult<()> {
        Suite::test_all(RedbBuilder)?;
        Ok(())
    }

    #[tokio::test]
    async fn the_state_machine_refuses_a_decision_whose_entry_is_of_another_term() {
        use crate::model::{Command, MoveReason};
        use openraft::CommittedLeaderId;
        let entry = |i: u64, log_term: u64, cmd: Command| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(log_term, 7), i),
            payload: EntryPayload::Normal(cmd),
        };
        let declare = Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![crate::model::AddressSpec {
                ip: "192.0.2.101/24".into(),
                interface: "eth0".into(),
                home: "mx1".into(),
                services: vec![],
            }],
            at_ms: 1,
        };
        let assign = |to: &str, epoch: u64| {
            Command::Assign {
                ip: "192.0.2.101/24".into(),
                to: to.into(),
                epoch,
                reason: MoveReason::Initial,
                at_ms: 2,
                term: None,
            }
            .decided_in(3)
        };
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, rx) = open(dir.path(), 100).unwrap();
        sm.data.state.set_membership(["mx1", "mx2"].map(|name| {
            let addr = "127.0.0.1:1".to_string();
            let role = crate::model::Role::Mail;
            (
                crate::model::Member {
                    name: name.into(),
                    addr,
                    role,
                },
                true,
            )
        }));
        let replies = sm
            .apply(vec![
                entry(1, 3, declare),
                // Decided in term 3, appended by the leader of term 4: refused.
                entry(2, 4, assign("mx2", 0)),
                entry(3, 3, assign("mx1", 0)),
            ])
            .await
            .unwrap();
        let written_later = crate::model::Refusal::OtherTerm {
            decided: 3,
            written: 4,
        };
        assert_eq!(replies[1].refused, Some(written_later), "{replies:?}");
        assert!(
            replies[2].changed && replies[2].refused.is_none(),
            "{replies:?}"
        );
        let state = rx.borrow().state.clone();
        assert_eq!(
            state.addresses["192.0.2.101/24"].owner.as_deref(),
            Some("mx1")
        );
    }

    #[tokio::test]
    async fn reopened_store_keeps_log_vote_and_the_state_of_its_last_snapshot() {
        use crate::model::Command;
        use openraft::CommittedLeaderId;
        let note = |i: u64| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(3, 7), i),
            payload: EntryPayload::Normal(Command::Note {
                by: "mx1".into(),
                text: format!("note {i}"),
                at_ms: i,
            }),
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, mut sm, _rx) = open(dir.path(), 100).unwrap();
            log.save_vote(&Vote::new(3, 7)).await.unwrap();
            // Entries 1 and 2 in the log, as openraft writes them (with their fsync).
            let db = log.db.clone();
            blocking(move || {
                let txn = db.begin_write().map_err(write_err)?;
                {
                    let mut t = txn.open_table(LOG).map_err(write_err)?;
                    for i in 1..=2 {
                        let bytes = serde_json::to_vec(&note(i)).map_err(write_err)?;
                        t.insert(i, bytes.as_slice()).map_err(write_err)?;
                    }
                }
                txn.commit().map_err(write_err)
            })
            .await
            .unwrap();
            sm.apply(vec![note(1)]).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            sm.apply(vec![note(2)]).await.unwrap();
        }
        let (mut log, mut sm, rx) = open(dir.path(), 100).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
        assert_eq!(
            log.get_log_state()
                .await
                .unwrap()
                .last_log_id
                .unwrap()
                .index,
            2
        );
        // The state machine comes back as of the snapshot; openraft applies entry 2 again
        // from the log.
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 1);
        assert_eq!(rx.borrow().state.events.len(), 1);
    }
}
