//! The service's records in an embedded SQLite database: VMs, which GPU each holds,
//! and the host driver each bound PCI function came from.
//!
//! Every change that must not be half-done (a VM and its GPUs, a release) runs in one
//! transaction, and a GPU's address is the primary key of its assignment row, so no
//! two VMs can ever be recorded as holding the same GPU, whatever the callers do.

mod assignments;
mod permissions;
mod records;
mod schema;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::api::types::{DeviceRole, ExitInfo, GuestNumaNode, VmInstanceConfig, VmState};
use crate::gpu::Bdf;

pub use permissions::{secure_state_dir, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE};
pub use records::SqliteDriverRecords;
pub use schema::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database holds schema version {found}, newer than this service's {supported}; run the newer vmm-service or restore a backup")]
    TooNew { found: i64, supported: i64 },
    #[error("state database {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("state database row for VM {name} is damaged: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("GPU {bdf} belongs to VM {owner}")]
    GpuTaken { bdf: Bdf, owner: String },
    #[error("a VM named {0} exists")]
    NameTaken(String),
}

/// The VMM process a VM runs in, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmProcess {
    pub pid: u32,
    /// Start time from `/proc/PID/stat` (clock ticks since boot), to tell a reused pid.
    pub start_time: u64,
    pub api_socket: String,
}

/// One VM as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub config: VmInstanceConfig,
    pub state: VmState,
    pub vmm: Option<VmmProcess>,
    pub serial_log: String,
    pub last_exit: Option<ExitInfo>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// One PCI function held by a VM: a GPU, a companion, or a function that went to
/// the VM with one of them (`unit` names the device id of the one asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuAssignment {
    pub bdf: Bdf,
    pub instance: String,
    pub device_id: String,
    pub unit: String,
    pub role: DeviceRole,
}

impl GpuAssignment {
    /// A GPU asked for on its own, heading its unit.
    pub fn gpu(bdf: Bdf, instance: &str, device_id: &str) -> Self {
        Self {
            bdf,
            instance: instance.to_string(),
            device_id: device_id.to_string(),
            unit: device_id.to_string(),
            role: DeviceRole::Gpu,
        }
    }

    /// Whether this is the device that was asked for, not one that came with it.
    pub fn heads_unit(&self) -> bool {
        self.device_id == self.unit
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        // It holds every VM's configuration, cloud-init user-data (secrets) too:
        // created 0600 whatever the umask; SQLite gives its -wal and -shm files
        // the database's mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(PRIVATE_FILE_MODE)
                .open(path);
            if let Err(e) = created {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(StateError::Io {
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
            }
        }
        let conn = Connection::open(path)?;
        Self::with_connection(conn)
    }

    pub fn in_memory() -> Result<Self, StateError> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(mut conn: Connection) -> Result<Self, StateError> {
        // WAL keeps readers (the API) off writers' backs; a crash mid-write leaves the
        // last committed transaction intact either way.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn)?;
        Ok(Self { conn })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Records a new VM with its GPUs, or nothing if the name or any GPU is taken.
    pub fn insert_instance(
        &mut self,
        record: &InstanceRecord,
        gpus: &[GpuAssignment],
    ) -> Result<(), StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let name = &record.config.name;
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM instances WHERE name = ?1",
                params![name],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if exists {
            return Err(StateError::NameTaken(name.clone()));
        }
        let config = serde_json::to_string(&record.config).map_err(|e| StateError::Corrupt {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        tx.execute(
            "INSERT INTO instances (name, config, state, serial_log, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                name,
                config,
                state_name(record.state),
                record.serial_log,
                record.created_at as i64,
                record.updated_at as i64
            ],
        )?;
        assignments::insert(&tx, gpus)?;
        tx.commit()?;
        Ok(())
    }

    /// Gives more GPUs to a recorded VM, all or none.
    pub fn assign_gpus(&mut self, gpus: &[GpuAssignment]) -> Result<(), StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        assignments::insert(&tx, gpus)?;
        tx.commit()?;
        Ok(())
    }

    pub fn unassign_gpu(&mut self, bdf: &Bdf) -> Result<(), StateError> {
        self.conn.execute(
            "DELETE FROM gpu_assignments WHERE bdf = ?1",
            params![bdf.to_string()],
        )?;
        Ok(())
    }

    pub fn delete_instance(&mut self, name: &str) -> Result<(), StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM gpu_assignments WHERE instance = ?1",
            params![name],
        )?;
        tx.execute("DELETE FROM instances WHERE name = ?1", params![name])?;
        tx.commit()?;
        Ok(())
    }

    pub fn instance(&self, name: &str) -> Result<Option<InstanceRecord>, StateError> {
        self.conn
            .query_row(
                &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE name = ?1"),
                params![name],
                read_instance,
            )
            .optional()?
            .transpose()
    }

    pub fn instances(&self) -> Result<Vec<InstanceRecord>, StateError> {
        let mut statement = self.conn.prepare(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY name"
        ))?;
        let rows = statement.query_map([], read_instance)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    pub fn set_config(&mut self, config: &VmInstanceConfig) -> Result<(), StateError> {
        let text = serde_json::to_string(config).map_err(|e| StateError::Corrupt {
            name: config.name.clone(),
            reason: e.to_string(),
        })?;
        self.conn.execute(
            "UPDATE instances SET config = ?2, updated_at = ?3 WHERE name = ?1",
            params![config.name, text, now() as i64],
        )?;
        Ok(())
    }

    /// Records that a VMM runs the VM, in `state`.
    pub fn set_running(
        &mut self,
        name: &str,
        state: VmState,
        vmm: &VmmProcess,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE instances SET state = ?2, pid = ?3, pid_start_time = ?4, api_socket = ?5,
                 updated_at = ?6 WHERE name = ?1",
            params![
                name,
                state_name(state),
                vmm.pid,
                vmm.start_time as i64,
                vmm.api_socket,
                now() as i64
            ],
        )?;
        Ok(())
    }

    /// Records the host NUMA node the running VM is bound to (None: not bound);
    /// cleared with the rest of the process's record when the VMM ends.
    pub fn set_numa_node(&mut self, name: &str, node: Option<u32>) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE instances SET numa_node = ?2 WHERE name = ?1",
            params![name, node],
        )?;
        Ok(())
    }

    /// Records where the running VM's RAM and vCPUs went: one host node, or its
    /// guest nodes (empty: one node); cleared as [`Store::set_numa_node`].
    pub fn set_placement(
        &mut self,
        name: &str,
        node: Option<u32>,
        guest: &[GuestNumaNode],
    ) -> Result<(), StateError> {
        let guest = match guest {
            [] => None,
            nodes => Some(
                serde_json::to_string(nodes).map_err(|e| StateError::Corrupt {
                    name: name.to_string(),
                    reason: e.to_string(),
                })?,
            ),
        };
        self.conn.execute(
            "UPDATE instances SET numa_node = ?2, guest_numa = ?3 WHERE name = ?1",
            params![name, node, guest],
        )?;
        Ok(())
    }

    pub fn guest_numa_of(&self, name: &str) -> Result<Vec<GuestNumaNode>, StateError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT guest_numa FROM instances WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()?
            .flatten();
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            name: name.to_string(),
            reason: format!("guest_numa: {e}"),
        })
    }

    pub fn numa_node_of(&self, name: &str) -> Result<Option<u32>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT numa_node FROM instances WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()?
            .flatten())
    }

    pub fn set_state(&mut self, name: &str, state: VmState) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE instances SET state = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, state_name(state), now() as i64],
        )?;
        Ok(())
    }

    /// Records that the VM's VMM ended: stopped, no process, how it ended, and its GPU
    /// assignments gone, in one transaction.
    pub fn record_exit(&mut self, name: &str, exit: &ExitInfo) -> Result<(), StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE instances SET state = 'stopped', pid = NULL, pid_start_time = NULL,
                 api_socket = NULL, numa_node = NULL, guest_numa = NULL, exit_code = ?2, exit_signal = ?3, exit_reason = ?4,
                 exit_at = ?5, updated_at = ?5 WHERE name = ?1",
            params![name, exit.code, exit.signal, exit.reason, exit.at as i64],
        )?;
        tx.execute(
            "DELETE FROM gpu_assignments WHERE instance = ?1",
            params![name],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The driver records of bound functions, for [`crate::gpu::GpuBinder`].
    pub fn driver_records(&mut self) -> SqliteDriverRecords<'_> {
        SqliteDriverRecords::new(&self.conn)
    }
}

const INSTANCE_COLUMNS: &str = "name, config, state, pid, pid_start_time, api_socket, serial_log,
    exit_code, exit_signal, exit_reason, exit_at, created_at, updated_at";

fn state_name(state: VmState) -> &'static str {
    match state {
        VmState::Stopped => "stopped",
        VmState::Created => "created",
        VmState::Running => "running",
    }
}

type InstanceRow = Result<InstanceRecord, StateError>;

fn read_instance(row: &Row<'_>) -> rusqlite::Result<InstanceRow> {
    let name: String = row.get(0)?;
    let config_text: String = row.get(1)?;
    let state_text: String = row.get(2)?;
    let pid: Option<u32> = row.get(3)?;
    let start_time: Option<i64> = row.get(4)?;
    let api_socket: Option<String> = row.get(5)?;
    let serial_log: String = row.get(6)?;
    let exit_code: Option<i32> = row.get(7)?;
    let exit_signal: Option<i32> = row.get(8)?;
    let exit_reason: Option<String> = row.get(9)?;
    let exit_at: Option<i64> = row.get(10)?;
    let created_at: i64 = row.get(11)?;
    let updated_at: i64 = row.get(12)?;
    let corrupt = |reason: String| StateError::Corrupt {
        name: name.clone(),
        reason,
    };
    let config: VmInstanceConfig = match serde_json::from_str(&config_text) {
        Ok(config) => config,
        Err(e) => return Ok(Err(corrupt(format!("configuration: {e}")))),
    };
    let state = match state_text.as_str() {
        "stopped" => VmState::Stopped,
        "created" => VmState::Created,
        "running" => VmState::Running,
        other => return Ok(Err(corrupt(format!("state '{other}'")))),
    };
    let vmm = match (pid, start_time, api_socket) {
        (Some(pid), Some(start_time), Some(api_socket)) => Some(VmmProcess {
            pid,
            start_time: start_time as u64,
            api_socket,
        }),
        _ => None,
    };
    let last_exit = exit_reason.map(|reason| ExitInfo {
        code: exit_code,
        signal: exit_signal,
        reason,
        at: exit_at.unwrap_or(0) as u64,
    });
    Ok(Ok(InstanceRecord {
        config,
        state,
        vmm,
        serial_log,
        last_exit,
        created_at: created_at as u64,
        updated_at: updated_at as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{DriverRecord, DriverRecords};

    fn config(name: &str) -> VmInstanceConfig {
        serde_json::from_value(serde_json::json!({"name": name, "kernel": "/k"})).unwrap()
    }

    fn record(name: &str) -> InstanceRecord {
        InstanceRecord {
            config: config(name),
            state: VmState::Stopped,
            vmm: None,
            serial_log: "/l".into(),
            last_exit: None,
            created_at: 1,
            updated_at: 1,
        }
    }

    fn gpu(bdf: &str, instance: &str) -> GpuAssignment {
        GpuAssignment::gpu(bdf.parse().unwrap(), instance, "gpu0")
    }

    #[test]
    fn a_gpu_has_one_owner_and_a_refused_insert_leaves_nothing() {
        let mut store = Store::in_memory().unwrap();
        store
            .insert_instance(&record("a"), &[gpu("0000:01:00.0", "a")])
            .unwrap();
        let err = store
            .insert_instance(&record("b"), &[gpu("0000:01:00.0", "b")])
            .unwrap_err();
        assert!(matches!(err, StateError::GpuTaken { ref owner, .. } if owner == "a"));
        assert!(
            store.instance("b").unwrap().is_none(),
            "no half-recorded VM"
        );
        let err = store.insert_instance(&record("a"), &[]).unwrap_err();
        assert!(matches!(err, StateError::NameTaken(_)));
    }

    #[test]
    fn an_exit_clears_the_process_and_the_gpus_together() {
        let mut store = Store::in_memory().unwrap();
        store
            .insert_instance(&record("a"), &[gpu("0000:01:00.0", "a")])
            .unwrap();
        let vmm = VmmProcess {
            pid: 42,
            start_time: 7,
            api_socket: "/s".into(),
        };
        store.set_running("a", VmState::Running, &vmm).unwrap();
        assert_eq!(store.instance("a").unwrap().unwrap().vmm, Some(vmm));
        assert_eq!(store.numa_node_of("a").unwrap(), None);
        store.set_numa_node("a", Some(1)).unwrap();
        assert_eq!(store.numa_node_of("a").unwrap(), Some(1));
        let guest = GuestNumaNode {
            guest_node: 1,
            host_node: 3,
            vcpus: vec![4, 5],
            memory: 1 << 30,
            gpus: vec!["0000:9a:00.0".into()],
            distances: vec![21, 10],
        };
        store
            .set_placement("a", None, std::slice::from_ref(&guest))
            .unwrap();
        assert_eq!(store.numa_node_of("a").unwrap(), None);
        assert_eq!(store.guest_numa_of("a").unwrap(), [guest]);
        let exit = ExitInfo {
            code: None,
            signal: Some(9),
            reason: "killed".into(),
            at: 5,
        };
        store.record_exit("a", &exit).unwrap();
        let after = store.instance("a").unwrap().unwrap();
        assert_eq!(after.state, VmState::Stopped);
        assert_eq!(after.vmm, None);
        assert_eq!(after.last_exit, Some(exit));
        assert!(store.all_gpus().unwrap().is_empty());
        assert_eq!(store.numa_node_of("a").unwrap(), None);
        assert!(store.guest_numa_of("a").unwrap().is_empty());
    }

    #[test]
    fn a_version_1_database_gains_the_numa_node_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(schema::VERSION_1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO instances (name, config, state, serial_log, created_at, updated_at)
                 VALUES ('old', ?1, 'stopped', '/dev/null', 1, 1)",
                params![
                    r#"{"name":"old","kernel":"/k","gpu_options":{"unbind_on_shutdown":false}}"#
                ],
            )
            .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.numa_node_of("old").unwrap(), None);
        store.set_numa_node("old", Some(0)).unwrap();
        assert_eq!(store.numa_node_of("old").unwrap(), Some(0));
        let old = store.instance("old").unwrap().unwrap();
        assert!(
            old.config.gpu_options.numa_affinity,
            "defaults on for old rows"
        );
    }

    #[test]
    fn driver_records_round_trip_including_no_driver() {
        let mut store = Store::in_memory().unwrap();
        let mut records = store.driver_records();
        let a: Bdf = "0000:01:00.0".parse().unwrap();
        let b: Bdf = "0000:01:00.1".parse().unwrap();
        let nvidia = DriverRecord {
            original_driver: Some("nvidia".into()),
        };
        let none = DriverRecord {
            original_driver: None,
        };
        records.put(a, nvidia.clone()).unwrap();
        records.put(b, none.clone()).unwrap();
        assert_eq!(records.get(&a).unwrap(), Some(nvidia));
        assert_eq!(records.get(&b).unwrap(), Some(none));
        records.remove(&a).unwrap();
        assert_eq!(records.get(&a).unwrap(), None);
    }

    #[test]
    fn configurations_from_before_disks_and_networks_still_read() {
        // The configuration is a JSON column: rows written before disks, networks and
        // cloud_init existed read back with none, so no schema step is needed.
        let mut store = Store::in_memory().unwrap();
        store.insert_instance(&record("new"), &[]).unwrap();
        store
            .connection()
            .execute(
                "UPDATE instances SET config = ?1 WHERE name = 'new'",
                params![
                    r#"{"name":"new","kernel":"/k","vcpus":1,"memory":536870912,
                    "gpu_options":{"enable_nvidia_gpudirect":false,"nvidia_gpudirect_clique":0,
                    "unbind_on_shutdown":true},"boot":false}"#
                ],
            )
            .unwrap();
        let config = store.instance("new").unwrap().unwrap().config;
        assert!(config.disks.is_empty() && config.networks.is_empty());
        assert_eq!(config.cloud_init, None);
    }

    #[test]
    fn disks_networks_and_cloud_init_round_trip() {
        let mut store = Store::in_memory().unwrap();
        let mut full = record("full");
        full.config = serde_json::from_value(serde_json::json!({
            "name": "full", "kernel": "/k",
            "disks": [{"path": "/img/a.raw", "readonly": true}],
            "networks": [{"bridge": "br0", "mac": "52:54:00:00:00:01"}, {}],
            "cloud_init": {"hostname": "h", "ssh_authorized_keys": ["ssh-ed25519 AAAA k"],
                           "user_data": "#cloud-config\n"}
        }))
        .unwrap();
        store.insert_instance(&full, &[]).unwrap();
        assert_eq!(store.instance("full").unwrap().unwrap(), full);
    }

    #[test]
    fn reopening_keeps_records_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        Store::open(&path)
            .unwrap()
            .insert_instance(&record("kept"), &[])
            .unwrap();
        let store = Store::open(&path).unwrap();
        assert!(store.instance("kept").unwrap().is_some());
        store
            .connection()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        assert!(matches!(Store::open(&path), Err(StateError::TooNew { .. })));
    }
}
