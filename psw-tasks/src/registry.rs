//! The tasks this binary can run, collected from every `#[task]` through `inventory`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use crate::error::{Error, Result};
use crate::schedule::DeclaredSchedule;
use crate::task::{TaskContext, TaskError, TaskOptions};

/// The future a type-erased handler returns: the encoded result, or the attempt's error.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TaskError>> + Send>>;

/// A type-erased handler: decodes the MessagePack argument array and runs the task.
pub(crate) type Handler = fn(TaskContext, &[u8]) -> HandlerFuture;

/// One registered task, as `#[task]` submits it.
#[derive(Debug)]
pub struct TaskDescriptor {
    name: &'static str,
    options: TaskOptions,
    handler: Handler,
    file: &'static str,
    line: u32,
    schedule: Option<DeclaredSchedule>,
    /// The parameters' names, in order: keyword arguments (a Celery message's `kwargs`) map
    /// onto them.
    parameters: &'static [&'static str],
}

impl TaskDescriptor {
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        options: TaskOptions,
        handler: Handler,
        file: &'static str,
        line: u32,
    ) -> Self {
        TaskDescriptor {
            name,
            options,
            handler,
            file,
            line,
            schedule: None,
            parameters: &[],
        }
    }

    /// The same task, its parameters named (`#[task]` always names them).
    #[doc(hidden)]
    pub const fn with_parameters(mut self, parameters: &'static [&'static str]) -> Self {
        self.parameters = parameters;
        self
    }

    /// The names of the task's arguments, in order (the `TaskContext` is not one).
    pub fn parameters(&self) -> &'static [&'static str] {
        self.parameters
    }

    /// The same task, fired by the beat on `schedule` (`#[task(schedule = ..)]`, `every`).
    #[doc(hidden)]
    pub const fn with_schedule(mut self, schedule: DeclaredSchedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// The wire name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The options set in `#[task(..)]`.
    pub fn options(&self) -> &TaskOptions {
        &self.options
    }

    /// Where the function is defined, as `file:line`.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    pub(crate) fn handler(&self) -> Handler {
        self.handler
    }

    pub(crate) fn schedule(&self) -> Option<&DeclaredSchedule> {
        self.schedule.as_ref()
    }
}

inventory::collect!(TaskDescriptor);

/// Two `#[task]` functions with one wire name: what [`Error::DuplicateTask`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Duplicate {
    name: &'static str,
    first: String,
    second: String,
}

impl Duplicate {
    pub(crate) fn error(&self) -> Error {
        Error::DuplicateTask {
            name: self.name.to_owned(),
            first: self.first.clone(),
            second: self.second.clone(),
        }
    }
}

/// The tasks linked into this binary, by wire name.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Sorted by name, without repeats: a task's position is a dense index for per-task
    /// counters on the worker's hot path.
    tasks: Vec<&'static TaskDescriptor>,
}

impl Registry {
    /// Collect every `#[task]` linked into the binary; two tasks with one name are an error
    /// that names both definitions.
    pub fn from_linked() -> Result<Self> {
        Self::linked().map_err(|duplicate| duplicate.error())
    }

    /// [`Registry::from_linked`], keeping a duplicate as a value that can be reported again.
    pub(crate) fn linked() -> std::result::Result<Self, Duplicate> {
        Self::from_descriptors(inventory::iter::<TaskDescriptor>)
    }

    pub(crate) fn from_descriptors(
        descriptors: impl IntoIterator<Item = &'static TaskDescriptor>,
    ) -> std::result::Result<Self, Duplicate> {
        let mut tasks = BTreeMap::new();
        for descriptor in descriptors {
            if let Some(first) = tasks.insert(descriptor.name, descriptor) {
                let mut places = [first.location(), descriptor.location()];
                places.sort();
                let [first, second] = places;
                return Err(Duplicate {
                    name: descriptor.name,
                    first,
                    second,
                });
            }
        }
        Ok(Registry {
            tasks: tasks.into_values().collect(),
        })
    }

    /// The task of that wire name.
    pub fn get(&self, name: &str) -> Option<&'static TaskDescriptor> {
        self.lookup(name).map(|(_, descriptor)| descriptor)
    }

    /// The task of that wire name and its position in [`Registry::iter`].
    pub(crate) fn lookup(&self, name: &str) -> Option<(usize, &'static TaskDescriptor)> {
        let index = self
            .tasks
            .binary_search_by(|descriptor| descriptor.name.cmp(name))
            .ok()?;
        Some((index, self.tasks[index]))
    }

    /// How many tasks there are.
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Every task, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &'static TaskDescriptor> + '_ {
        self.tasks.iter().copied()
    }

    /// The queues the registered tasks are sent to, sorted, without repeats.
    pub fn queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = self.iter().map(|t| t.options.queue.to_owned()).collect();
        queues.sort();
        queues.dedup();
        queues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: TaskContext, _: &[u8]) -> HandlerFuture {
        Box::pin(async { Ok(Vec::new()) })
    }

    static A: TaskDescriptor = TaskDescriptor::new("dup", TaskOptions::DEFAULT, never, "a.rs", 1);
    static B: TaskDescriptor = TaskDescriptor::new("dup", TaskOptions::DEFAULT, never, "b.rs", 7);
    static C: TaskDescriptor = TaskDescriptor::new("other", TaskOptions::DEFAULT, never, "c.rs", 2);

    #[test]
    fn duplicate_names_name_both_places() {
        let err = Registry::from_descriptors([&A, &C, &B])
            .unwrap_err()
            .error();
        assert_eq!(
            err.to_string(),
            "task name `dup` is registered twice: at a.rs:1 and at b.rs:7"
        );
    }

    #[test]
    fn lookup_by_name() {
        let registry = Registry::from_descriptors([&A, &C]).unwrap();
        assert_eq!(registry.get("other").unwrap().location(), "c.rs:2");
        assert!(registry.get("missing").is_none());
        assert_eq!(registry.lookup("other").map(|(index, _)| index), Some(1));
        assert_eq!(
            registry.iter().nth(1).map(TaskDescriptor::name),
            Some("other")
        );
        assert_eq!(registry.queues(), vec!["default".to_owned()]);
    }
}
