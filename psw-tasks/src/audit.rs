//! The audit log: every action taken from the dashboard (who, what, when, from where, how many
//! jobs), kept in a capped stream so that replays and purges can be traced after the fact.

use crate::wire::{wire_enum, wire_serde};

/// Entries the audit stream keeps; older ones are trimmed.
pub(crate) const AUDIT_LEN: usize = 10_000;

wire_enum! {
    /// What an operator did.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum AuditAction {
        /// Paused a queue.
        QueuePause => "queue.pause",
        /// Resumed a queue.
        QueueResume => "queue.resume",
        /// Cancelled a job.
        JobCancel => "job.cancel",
        /// Retried a failed job (replayed its dead letter).
        JobRetry => "job.retry",
        /// Replayed one dead letter.
        DeadReplay => "dead.replay",
        /// Purged one dead letter.
        DeadPurge => "dead.purge",
        /// Replayed a failure group.
        GroupReplay => "group.replay",
        /// Purged a failure group.
        GroupPurge => "group.purge",
        /// Exported a failure group as JSON lines.
        GroupExport => "group.export",
        /// Replayed every dead letter of a task.
        TaskReplay => "task.replay",
        /// Purged every dead letter of a task.
        TaskPurge => "task.purge",
        /// Ran a schedule now.
        ScheduleRun => "schedule.run",
        /// Paused a schedule.
        SchedulePause => "schedule.pause",
        /// Resumed a schedule.
        ScheduleResume => "schedule.resume",
        /// An action this version does not know, written by a newer one.
        Unknown => "unknown",
    }
}

wire_serde!(AuditAction, Unknown);

wire_enum! {
    /// The fields of an audit entry in `{ns}:audit`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum AuditField {
        At => "at_ms",
        User => "user",
        Address => "address",
        Action => "action",
        Target => "target",
        Jobs => "jobs",
    }
}

/// One action in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Its id in the stream (empty until stored).
    pub id: String,
    /// When, in ms since the Unix epoch.
    pub at_ms: i64,
    /// Who: the dashboard user.
    pub user: String,
    /// From which address.
    pub address: String,
    /// What.
    pub action: AuditAction,
    /// On what: a queue, job id, entry id, group id, task or schedule name.
    pub target: String,
    /// How many jobs it touched.
    pub jobs: u64,
}

impl AuditEntry {
    /// An action of `user` from `address` on `target`, touching `jobs` jobs, now.
    pub fn new(
        user: impl Into<String>,
        address: impl Into<String>,
        action: AuditAction,
        target: impl Into<String>,
        jobs: u64,
    ) -> AuditEntry {
        AuditEntry {
            id: String::new(),
            at_ms: crate::envelope::now_ms(),
            user: user.into(),
            address: address.into(),
            action,
            target: target.into(),
            jobs,
        }
    }

    /// The entry as stream fields.
    pub(crate) fn fields(&self) -> [(&'static str, String); 6] {
        [
            (AuditField::At.as_str(), self.at_ms.to_string()),
            (AuditField::User.as_str(), self.user.clone()),
            (AuditField::Address.as_str(), self.address.clone()),
            (AuditField::Action.as_str(), self.action.as_str().to_owned()),
            (AuditField::Target.as_str(), self.target.clone()),
            (AuditField::Jobs.as_str(), self.jobs.to_string()),
        ]
    }

    /// An entry read back from its stream fields; unknown fields are skipped.
    pub(crate) fn from_fields(id: String, fields: Vec<(String, String)>) -> AuditEntry {
        let mut entry = AuditEntry {
            id,
            at_ms: 0,
            user: String::new(),
            address: String::new(),
            action: AuditAction::Unknown,
            target: String::new(),
            jobs: 0,
        };
        for (name, value) in fields {
            match AuditField::from_wire(&name) {
                Some(AuditField::At) => entry.at_ms = value.parse().unwrap_or(0),
                Some(AuditField::User) => entry.user = value,
                Some(AuditField::Address) => entry.address = value,
                Some(AuditField::Action) => {
                    entry.action = AuditAction::from_wire(&value).unwrap_or(AuditAction::Unknown)
                }
                Some(AuditField::Target) => entry.target = value,
                Some(AuditField::Jobs) => entry.jobs = value.parse().unwrap_or(0),
                None => {}
            }
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_from_its_fields() {
        let mut entry = AuditEntry::new("ops", "10.0.0.7", AuditAction::GroupReplay, "ab12", 40);
        let fields = entry
            .fields()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .chain([("from_the_future".to_owned(), "x".to_owned())])
            .collect();
        let back = AuditEntry::from_fields("1-0".to_owned(), fields);
        entry.id = "1-0".to_owned();
        assert_eq!(back, entry);
        assert_eq!(
            AuditAction::from_wire("queue.pause"),
            Some(AuditAction::QueuePause)
        );
    }
}
