//! Which VM holds which PCI function. One row per function, keyed by its address, so
//! no function can be recorded with two VMs; the functions that went to a VM together
//! (a GPU and the rest of its IOMMU group) share a `unit`.

use rusqlite::{params, OptionalExtension};

use super::{GpuAssignment, StateError, Store};
use crate::api::types::DeviceRole;
use crate::gpu::Bdf;

/// Rows from before units (schema version 2) have no unit and no role: each was a GPU
/// on its own, its own unit.
const COLUMNS: &str = "bdf, instance, device_id, COALESCE(unit, device_id), role";

impl Store {
    /// Every function VM `name` holds, in the order they were given to it (a unit's
    /// head before the functions that came with it).
    pub fn gpus_of(&self, name: &str) -> Result<Vec<GpuAssignment>, StateError> {
        self.query_assignments(
            &format!("SELECT {COLUMNS} FROM gpu_assignments WHERE instance = ?1 ORDER BY rowid"),
            params![name],
        )
    }

    pub fn all_gpus(&self) -> Result<Vec<GpuAssignment>, StateError> {
        self.query_assignments(
            &format!("SELECT {COLUMNS} FROM gpu_assignments ORDER BY bdf"),
            params![],
        )
    }

    pub fn owner_of(&self, bdf: &Bdf) -> Result<Option<String>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT instance FROM gpu_assignments WHERE bdf = ?1",
                params![bdf.to_string()],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// The functions of VM `name`'s unit `unit`, head first.
    pub fn unit_of(&self, name: &str, unit: &str) -> Result<Vec<GpuAssignment>, StateError> {
        Ok(self
            .gpus_of(name)?
            .into_iter()
            .filter(|a| a.unit == unit)
            .collect())
    }

    fn query_assignments(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<GpuAssignment>, StateError> {
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement.query_map(args, |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (bdf, instance, device_id, unit, role) = row?;
            let corrupt = |reason: String| StateError::Corrupt {
                name: instance.clone(),
                reason,
            };
            let bdf = bdf
                .parse()
                .map_err(|_| corrupt(format!("device address '{bdf}'")))?;
            let role = parse_role(&role).ok_or_else(|| corrupt(format!("device role '{role}'")))?;
            out.push(GpuAssignment {
                bdf,
                instance,
                device_id,
                unit,
                role,
            });
        }
        Ok(out)
    }
}

/// Records `gpus`, or fails on the first one another VM holds.
pub(super) fn insert(
    tx: &rusqlite::Transaction<'_>,
    gpus: &[GpuAssignment],
) -> Result<(), StateError> {
    for gpu in gpus {
        let owner: Option<String> = tx
            .query_row(
                "SELECT instance FROM gpu_assignments WHERE bdf = ?1",
                params![gpu.bdf.to_string()],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(owner) = owner {
            return Err(StateError::GpuTaken {
                bdf: gpu.bdf,
                owner,
            });
        }
        tx.execute(
            "INSERT INTO gpu_assignments (bdf, instance, device_id, assigned_at, unit, role)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                gpu.bdf.to_string(),
                gpu.instance,
                gpu.device_id,
                super::now() as i64,
                gpu.unit,
                role_name(gpu.role)
            ],
        )?;
    }
    Ok(())
}

fn role_name(role: DeviceRole) -> &'static str {
    match role {
        DeviceRole::Gpu => "gpu",
        DeviceRole::Companion => "companion",
        DeviceRole::Function => "function",
        DeviceRole::GroupMember => "group_member",
    }
}

fn parse_role(text: &str) -> Option<DeviceRole> {
    Some(match text {
        "gpu" => DeviceRole::Gpu,
        "companion" => DeviceRole::Companion,
        "function" => DeviceRole::Function,
        "group_member" => DeviceRole::GroupMember,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{schema, InstanceRecord};
    use super::*;
    use crate::api::types::VmState;
    use rusqlite::Connection;

    #[test]
    fn a_version_2_database_reads_its_gpus_as_units_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(schema::VERSION_1).unwrap();
            conn.execute_batch("ALTER TABLE instances ADD COLUMN numa_node INTEGER;")
                .unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO instances (name, config, state, serial_log, created_at, updated_at)
                 VALUES ('old', '{\"name\":\"old\",\"kernel\":\"/k\"}', 'stopped', '/l', 1, 1)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO gpu_assignments (bdf, instance, device_id, assigned_at)
                 VALUES ('0000:01:00.0', 'old', 'gpu0', 1)",
                [],
            )
            .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        let old = store.gpus_of("old").unwrap();
        assert_eq!(
            old,
            [GpuAssignment::gpu(
                "0000:01:00.0".parse().unwrap(),
                "old",
                "gpu0"
            )]
        );
        assert!(old[0].heads_unit());
        let member = GpuAssignment {
            bdf: "0000:01:00.1".parse().unwrap(),
            instance: "old".into(),
            device_id: "gpu0-f1".into(),
            unit: "gpu0".into(),
            role: DeviceRole::Function,
        };
        store.assign_gpus(std::slice::from_ref(&member)).unwrap();
        assert_eq!(store.unit_of("old", "gpu0").unwrap().len(), 2);
        assert_eq!(store.gpus_of("old").unwrap()[1], member);
        let record = InstanceRecord {
            config: serde_json::from_str(r#"{"name":"new","kernel":"/k"}"#).unwrap(),
            state: VmState::Stopped,
            vmm: None,
            serial_log: "/l".into(),
            last_exit: None,
            created_at: 1,
            updated_at: 1,
        };
        let taken = GpuAssignment::gpu(member.bdf, "new", "gpu0");
        assert!(matches!(
            store.insert_instance(&record, &[taken]),
            Err(StateError::GpuTaken { ref owner, .. }) if owner == "old"
        ));
    }
}
