//! The gpu module's driver records, kept in the state database so a bind and the VM
//! that caused it survive a restart together.

use std::path::PathBuf;

use rusqlite::{params, Connection, OptionalExtension};

use crate::gpu::{Bdf, DriverRecord, DriverRecords, GpuError};

pub struct SqliteDriverRecords<'a> {
    conn: &'a Connection,
}

impl<'a> SqliteDriverRecords<'a> {
    pub fn new(conn: &'a Connection) -> Self {
        Self { conn }
    }

    fn fail(&self, e: rusqlite::Error) -> GpuError {
        GpuError::Records {
            path: self.conn.path().map(PathBuf::from).unwrap_or_default(),
            reason: e.to_string(),
        }
    }
}

impl DriverRecords for SqliteDriverRecords<'_> {
    fn get(&self, bdf: &Bdf) -> Result<Option<DriverRecord>, GpuError> {
        self.conn
            .query_row(
                "SELECT original_driver FROM driver_records WHERE bdf = ?1",
                params![bdf.to_string()],
                |row| row.get::<_, Option<String>>(0),
            )
            .optional()
            .map(|found| found.map(|original_driver| DriverRecord { original_driver }))
            .map_err(|e| self.fail(e))
    }

    fn put(&mut self, bdf: Bdf, record: DriverRecord) -> Result<(), GpuError> {
        self.conn
            .execute(
                "INSERT INTO driver_records (bdf, original_driver) VALUES (?1, ?2)
                 ON CONFLICT (bdf) DO UPDATE SET original_driver = excluded.original_driver",
                params![bdf.to_string(), record.original_driver],
            )
            .map(drop)
            .map_err(|e| self.fail(e))
    }

    fn remove(&mut self, bdf: &Bdf) -> Result<(), GpuError> {
        self.conn
            .execute(
                "DELETE FROM driver_records WHERE bdf = ?1",
                params![bdf.to_string()],
            )
            .map(drop)
            .map_err(|e| self.fail(e))
    }
}
