//! A signal store joined with its metadata table. Ids present on one side only are reported
//! once, by Id, and left out.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::meta::{MetaRow, Metadata};
use crate::store::SignalStore;

/// Store + table, with every mismatch between them.
pub struct Dataset {
    pub store: Arc<dyn SignalStore>,
    pub meta: Metadata,
    /// Ids in both, sorted.
    pub ids: Vec<u64>,
    /// In the table, not in the store.
    pub missing_in_store: Vec<u64>,
    /// In the store, not in the table.
    pub missing_in_table: Vec<u64>,
    /// Ids whose table `Length`/`Channels` disagree with the store, with what differs.
    pub disagreements: Vec<(u64, String)>,
}

impl Dataset {
    pub fn join(store: Arc<dyn SignalStore>, meta: Metadata) -> Self {
        let mut ids = Vec::new();
        let mut missing_in_store = Vec::new();
        let mut disagreements = Vec::new();
        for row in &meta.rows {
            match store.info(row.id) {
                Ok(info) => {
                    ids.push(row.id);
                    let mut what = Vec::new();
                    if row.length.is_some_and(|l| l as usize != info.length) {
                        what.push(format!("Length {} in table, {} in store", row.length.unwrap_or(0), info.length));
                    }
                    if row.channels.is_some_and(|c| c as usize != info.channels) {
                        what.push(format!("Channels {} in table, {} in store", row.channels.unwrap_or(0), info.channels));
                    }
                    if !what.is_empty() {
                        disagreements.push((row.id, what.join("; ")));
                    }
                }
                Err(_) => missing_in_store.push(row.id),
            }
        }
        let missing_in_table = store.samples().iter().map(|s| s.id).filter(|id| meta.row(*id).is_none()).collect();
        Dataset { store, meta, ids, missing_in_store, missing_in_table, disagreements }
    }

    /// Every mismatch, one line each, for the caller to show.
    pub fn mismatch_warnings(&self) -> Vec<String> {
        let path = self.store.path().display();
        let mut out = Vec::new();
        for id in &self.missing_in_store {
            // A dataset of that name the store could not use says why.
            match self.store.ignored().iter().find(|d| crate::store::parse_id(&d.name) == Some(*id)) {
                Some(d) => out.push(format!("Id {id}: {path}: dataset \"{}\" unusable: {}; skipped", d.name, d.reason)),
                None => out.push(format!("Id {id} is in {} but not in {path}; skipped", self.meta.path.display())),
            }
        }
        for id in &self.missing_in_table {
            out.push(format!("Id {id} is in {path} but not in {}; skipped", self.meta.path.display()));
        }
        for (id, what) in &self.disagreements {
            out.push(format!("Id {id}: {what}"));
        }
        out
    }

    pub fn row(&self, id: u64) -> Option<&MetaRow> {
        self.meta.row(id)
    }

    /// Count of matched Ids per label.
    pub fn label_counts(&self) -> BTreeMap<i64, usize> {
        let mut m = BTreeMap::new();
        for id in &self.ids {
            if let Some(r) = self.meta.row(*id) {
                *m.entry(r.label).or_insert(0) += 1;
            }
        }
        m
    }
}
