//! Where each function's driver before binding is remembered, so releasing it can put
//! it back, even from another process. The service will keep these in its database; the
//! command line keeps them in a small JSON file.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::GpuError;
use super::Bdf;

/// The driver a function had before it was bound to vfio-pci (`None`: it had none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverRecord {
    pub original_driver: Option<String>,
}

pub trait DriverRecords {
    fn get(&self, bdf: &Bdf) -> Result<Option<DriverRecord>, GpuError>;
    fn put(&mut self, bdf: Bdf, record: DriverRecord) -> Result<(), GpuError>;
    fn remove(&mut self, bdf: &Bdf) -> Result<(), GpuError>;
}

/// Records held in memory, for tests and for callers that persist them elsewhere.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryRecords {
    pub records: BTreeMap<Bdf, DriverRecord>,
}

impl DriverRecords for MemoryRecords {
    fn get(&self, bdf: &Bdf) -> Result<Option<DriverRecord>, GpuError> {
        Ok(self.records.get(bdf).cloned())
    }

    fn put(&mut self, bdf: Bdf, record: DriverRecord) -> Result<(), GpuError> {
        self.records.insert(bdf, record);
        Ok(())
    }

    fn remove(&mut self, bdf: &Bdf) -> Result<(), GpuError> {
        self.records.remove(bdf);
        Ok(())
    }
}

/// Records in a JSON file, rewritten whole (through a rename) on every change so a
/// crash leaves either the old or the new file, never half of one.
#[derive(Debug, Clone)]
pub struct JsonFileRecords {
    path: PathBuf,
}

/// Default location for the command line's records.
pub const DEFAULT_RECORDS_PATH: &str = "/var/lib/form-vmm/gpu-drivers.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct RecordsFile {
    version: u32,
    functions: BTreeMap<Bdf, DriverRecord>,
}

const FILE_VERSION: u32 = 1;

impl JsonFileRecords {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, reason: impl Into<String>) -> GpuError {
        GpuError::Records {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn load(&self) -> Result<RecordsFile, GpuError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(RecordsFile {
                    version: FILE_VERSION,
                    functions: BTreeMap::new(),
                })
            }
            Err(e) => return Err(self.fail(e.to_string())),
        };
        let file: RecordsFile = serde_json::from_str(&text)
            .map_err(|e| self.fail(format!("not a driver record file ({e}); move it aside")))?;
        if file.version != FILE_VERSION {
            return Err(self.fail(format!(
                "version {} is not the supported {FILE_VERSION}",
                file.version
            )));
        }
        Ok(file)
    }

    fn store(&self, file: &RecordsFile) -> Result<(), GpuError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| self.fail(format!("creating {}: {e}", dir.display())))?;
        }
        let text = serde_json::to_string_pretty(file).map_err(|e| self.fail(e.to_string()))?;
        let mut temp = self.path.clone().into_os_string();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        fs::write(&temp, text + "\n")
            .map_err(|e| self.fail(format!("writing {}: {e}", temp.display())))?;
        fs::rename(&temp, &self.path).map_err(|e| self.fail(e.to_string()))
    }
}

impl DriverRecords for JsonFileRecords {
    fn get(&self, bdf: &Bdf) -> Result<Option<DriverRecord>, GpuError> {
        Ok(self.load()?.functions.get(bdf).cloned())
    }

    fn put(&mut self, bdf: Bdf, record: DriverRecord) -> Result<(), GpuError> {
        let mut file = self.load()?;
        file.functions.insert(bdf, record);
        self.store(&file)
    }

    fn remove(&mut self, bdf: &Bdf) -> Result<(), GpuError> {
        let mut file = self.load()?;
        if file.functions.remove(bdf).is_some() {
            self.store(&file)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_records_survive_a_new_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/gpu-drivers.json");
        let gpu: Bdf = "0000:01:00.0".parse().unwrap();
        let audio: Bdf = "0000:01:00.1".parse().unwrap();
        let mut records = JsonFileRecords::new(&path);
        assert_eq!(records.get(&gpu).unwrap(), None);
        records
            .put(
                gpu,
                DriverRecord {
                    original_driver: Some("nvidia".into()),
                },
            )
            .unwrap();
        records
            .put(
                audio,
                DriverRecord {
                    original_driver: None,
                },
            )
            .unwrap();

        let mut reopened = JsonFileRecords::new(&path);
        assert_eq!(
            reopened.get(&gpu).unwrap(),
            Some(DriverRecord {
                original_driver: Some("nvidia".into())
            })
        );
        assert_eq!(
            reopened.get(&audio).unwrap(),
            Some(DriverRecord {
                original_driver: None
            })
        );
        reopened.remove(&gpu).unwrap();
        assert_eq!(JsonFileRecords::new(&path).get(&gpu).unwrap(), None);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu-drivers.json");
        fs::write(&path, "{ not json").unwrap();
        let err = JsonFileRecords::new(&path)
            .get(&"01:00.0".parse().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("move it aside"), "{err}");
    }
}
