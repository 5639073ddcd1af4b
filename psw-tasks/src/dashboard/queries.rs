//! The query parameters of the dashboard's listings, shared by the API and the pages: a page
//! of dead letters, a page of the audit log.

use serde::Deserialize;

use crate::dead::DeadFilter;

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
