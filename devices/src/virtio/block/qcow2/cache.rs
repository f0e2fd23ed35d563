//! A bounded cache of cluster-sized metadata tables (L2 tables, refcount blocks),
//! keyed by their host offset, least recently used out first. The owner decides
//! what a dirty table's eviction needs (an L2 table waits for the refcounts it
//! depends on), so this only keeps the tables and their dirty flags.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

pub(super) struct Slot {
    pub data: Vec<u8>,
    pub dirty: bool,
    used: u64,
}

pub(super) struct TableCache {
    capacity: usize,
    slots: HashMap<u64, Slot>,
    clock: u64,
}

impl TableCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            slots: HashMap::new(),
            clock: 0,
        }
    }

    /// The table at `offset`, if cached; marks it recently used.
    pub fn get(&mut self, offset: u64) -> Option<&mut Slot> {
        self.clock += 1;
        let clock = self.clock;
        let slot = self.slots.get_mut(&offset)?;
        slot.used = clock;
        Some(slot)
    }

    /// The table to evict before inserting another, when the cache is full.
    pub fn victim(&self) -> Option<(u64, bool)> {
        if self.slots.len() < self.capacity {
            return None;
        }
        self.slots
            .iter()
            .min_by_key(|(_, s)| s.used)
            .map(|(&off, s)| (off, s.dirty))
    }

    pub fn remove(&mut self, offset: u64) -> Option<Slot> {
        self.slots.remove(&offset)
    }

    /// Adds a table; the caller made room with `victim`/`remove`.
    pub fn insert(&mut self, offset: u64, data: Vec<u8>, dirty: bool) -> &mut Slot {
        self.clock += 1;
        let used = self.clock;
        let slot = Slot { data, dirty, used };
        match self.slots.entry(offset) {
            Entry::Occupied(mut o) => {
                o.insert(slot);
                o.into_mut()
            }
            Entry::Vacant(v) => v.insert(slot),
        }
    }

    /// Offsets of the dirty tables, in file order (sequential write-back).
    pub fn dirty(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(&o, _)| o)
            .collect();
        v.sort_unstable();
        v
    }

    pub fn has_dirty(&self) -> bool {
        self.slots.values().any(|s| s.dirty)
    }
}
