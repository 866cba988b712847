//! What the rules decide, waiting to be carried out: records to store, then work to publish,
//! then the journal and rejections that describe them.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use cube_shared::{Endpoints, JournalEntry, Rejection, Service, Task, TaskEvent};
use uuid::Uuid;

use crate::cluster::Cluster;

/// A TaskEvent for the work stream, on `tasks.pending` or `tasks.pending.<worker>`. Published
/// with `Nats-Msg-Id` = the event id, so a copy sent again is dropped by JetStream.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    pub subject: String,
    pub event: TaskEvent,
}

/// Decisions accumulated by the handlers since the last [`super::Rules::take_effects`].
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// Tasks changed, in the order first changed; each is stored once, as it is at the end.
    tasks: Vec<Uuid>,
    dirty: HashSet<Uuid>,
    pub(super) work: Vec<Work>,
    pub(super) journal: Vec<JournalEntry>,
    pub(super) rejections: Vec<Rejection>,
    /// When the submissions first placed by `work` arrived.
    pub(super) placed: Vec<DateTime<Utc>>,
    /// Services whose records changed, in the order first changed.
    services: Vec<String>,
    /// Services' healthy endpoints that changed.
    pub(super) endpoints: Vec<Endpoints>,
    /// Tasks that ended long enough ago to be forgotten.
    pub(super) forgotten: Vec<Uuid>,
}

impl Effects {
    pub(super) fn changed(&mut self, id: Uuid) {
        if self.dirty.insert(id) {
            self.tasks.push(id);
        }
    }

    pub(super) fn service(&mut self, name: &str) {
        if !self.services.iter().any(|s| s == name) {
            self.services.push(name.to_string());
        }
    }

    pub(super) fn resolve(
        self,
        cluster: &Cluster,
        services: &BTreeMap<String, Service>,
    ) -> Decided {
        Decided {
            tasks: self
                .tasks
                .iter()
                .filter_map(|id| cluster.task(id).cloned())
                .collect(),
            work: self.work,
            journal: self.journal,
            rejections: self.rejections,
            placed: self.placed,
            services: self
                .services
                .iter()
                .filter_map(|name| services.get(name).cloned())
                .collect(),
            endpoints: self.endpoints,
            forgotten: self.forgotten,
        }
    }
}

/// Effects to carry out, in this order: store `tasks` (the Task DB); publish `work`; publish `journal` and `rejections`; acknowledge what was handled. A
/// worker checks the Task DB before it acts on work, and the journal never announces what was
/// not stored.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decided {
    pub tasks: Vec<Task>,
    pub work: Vec<Work>,
    pub journal: Vec<JournalEntry>,
    pub rejections: Vec<Rejection>,
    pub placed: Vec<DateTime<Utc>>,
    /// Service records to store (the Task DB, `service.<name>`), with the tasks.
    pub services: Vec<Service>,
    /// Endpoints to write to the `cube-endpoints` bucket, after the records.
    pub endpoints: Vec<Endpoints>,
    /// Tasks forgotten ([`super::retention`]): their records are deleted.
    pub forgotten: Vec<Uuid>,
}

impl Decided {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.services.is_empty()
            && self.endpoints.is_empty()
            && self.forgotten.is_empty()
            && self.work.is_empty()
            && self.journal.is_empty()
            && self.rejections.is_empty()
    }

    /// The kinds of the journal entries, in order, for tests.
    #[cfg(test)]
    pub(crate) fn journal_kinds(&self) -> Vec<&str> {
        self.journal.iter().map(|e| e.kind.as_str()).collect()
    }
}
