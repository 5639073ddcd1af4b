//! The query parameters of the dashboard's listings, shared by the API and the pages: a page
//! of dead letters, a page of the audit log, how far a job is looked for in its queue.

use serde::Deserialize;

use crate::dead::DeadFilter;

/// Jobs of each queue lane's stream, and of its delayed set, looked through for a job not
/// finished yet (its envelope is there until it is settled).
pub(crate) const JOB_QUEUE_LOOK: usize = 1_000;

/// A page of dead letters: after an entry id, of a group or a task.
#[derive(Deserialize)]
pub(crate) struct DeadQuery {
    pub(crate) after: Option<String>,
    pub(crate) limit: Option<usize>,
    pub(crate) group: Option<String>,
    pub(crate) task: Option<String>,
}

impl DeadQuery {
    pub(crate) fn filter(&self) -> DeadFilter {
        match (&self.group, &self.task) {
            (Some(group), _) if !group.is_empty() => DeadFilter::Group(group.clone()),
            (_, Some(task)) if !task.is_empty() => DeadFilter::Task(task.clone()),
            _ => DeadFilter::All,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    pub(crate) before: Option<String>,
    pub(crate) limit: Option<usize>,
}
