//! Schema versions, kept in SQLite's `user_version`; each step upgrades by one.

use rusqlite::Connection;

use super::StateError;

/// Steps from version N-1 to N, at index N-1.
const MIGRATIONS: &[&str] = &[VERSION_1, VERSION_2, VERSION_3, VERSION_4];

pub(super) const VERSION_1: &str = "
    CREATE TABLE instances (
        name           TEXT PRIMARY KEY,
        config         TEXT NOT NULL,
        state          TEXT NOT NULL CHECK (state IN ('stopped', 'created', 'running')),
        pid            INTEGER,
        pid_start_time INTEGER,
        api_socket     TEXT,
        serial_log     TEXT NOT NULL,
        exit_code      INTEGER,
        exit_signal    INTEGER,
        exit_reason    TEXT,
        exit_at        INTEGER,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL
    );
    CREATE TABLE gpu_assignments (
        bdf         TEXT PRIMARY KEY,
        instance    TEXT NOT NULL REFERENCES instances(name),
        device_id   TEXT NOT NULL,
        assigned_at INTEGER NOT NULL,
        UNIQUE (instance, device_id)
    );
    CREATE TABLE driver_records (
        bdf             TEXT PRIMARY KEY,
        original_driver TEXT
    );
";

/// The host NUMA node a running VM is bound to.
const VERSION_2: &str = "
    ALTER TABLE instances ADD COLUMN numa_node INTEGER;
";

/// Every function a VM holds has a row, not only its GPUs: `unit` is the device id
/// of the GPU or companion it went to the VM with (NULL in older rows: the row's
/// own), `role` what it is to the VM (`gpu`, `companion`, `function`,
/// `group_member`).
const VERSION_3: &str = "
    ALTER TABLE gpu_assignments ADD COLUMN unit TEXT;
    ALTER TABLE gpu_assignments ADD COLUMN role TEXT NOT NULL DEFAULT 'gpu';
";

/// The guest NUMA nodes of a running VM that mirrors its GPUs' host nodes, as
/// JSON (`VmInfo.guest_numa`); NULL with one node.
const VERSION_4: &str = "
    ALTER TABLE instances ADD COLUMN guest_numa TEXT;
";

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StateError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StateError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
