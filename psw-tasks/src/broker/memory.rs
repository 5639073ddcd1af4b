//! The in-process broker: the same semantics as the Redis one (groups, pending entries, leases,
//! delayed sets, records with a TTL), for single-process use and fast tests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};

use super::{BoxFuture, Broker, DeadLetter, Delivery, NewJob, Promoted, Write};
use crate::Result;

#[derive(Default)]
pub(crate) struct MemoryBroker {
    state: Mutex<State>,
    arrivals: Notify,
    finished: FinishedChannel,
}

pub(crate) struct FinishedChannel(broadcast::Sender<Arc<str>>);

impl Default for FinishedChannel {
    fn default() -> Self {
        FinishedChannel(broadcast::channel(4096).0)
    }
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    records: HashMap<String, (Vec<u8>, Instant)>,
    dead: Vec<DeadLetter>,
    next_entry: u64,
    next_delayed: u64,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<(String, Vec<u8>)>,
    pending: HashMap<String, Pending>,
    delayed: BTreeMap<(i64, u64), Vec<u8>>,
}

struct Pending {
    consumer: String,
    last_delivery: Instant,
    payload: Vec<u8>,
}

impl MemoryBroker {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-changed in a way that
        // matters more than losing the broker: keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take_ready(&self, consumer: &str, queues: &[String], max: usize) -> Vec<Delivery> {
        let mut state = self.lock();
        let now = Instant::now();
        let mut out = Vec::new();
        for name in queues {
            let Some(queue) = state.queues.get_mut(name) else {
                continue;
            };
            let queue_name: Arc<str> = Arc::from(name.as_str());
            while out.len() < max {
                let Some((entry_id, payload)) = queue.ready.pop_front() else {
                    break;
                };
                queue.pending.insert(
                    entry_id.clone(),
                    Pending {
                        consumer: consumer.to_owned(),
                        last_delivery: now,
                        payload: payload.clone(),
                    },
                );
                out.push(Delivery {
                    queue: queue_name.clone(),
                    entry_id,
                    payload,
                });
            }
        }
        out
    }
}

impl State {
    fn append(&mut self, queue: &str, payload: Vec<u8>) {
        self.next_entry += 1;
        let entry_id = format!("{}-0", self.next_entry);
        self.queues
            .entry(queue.to_owned())
            .or_default()
            .ready
            .push_back((entry_id, payload));
    }
}

impl Broker for MemoryBroker {
    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.lock();
            for queue in queues {
                state.queues.entry(queue.clone()).or_default();
            }
            Ok(())
        })
    }

    fn push(&self, jobs: Vec<NewJob>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            {
                let mut state = self.lock();
                for job in jobs {
                    match job.due_ms {
                        Some(due) if due > crate::envelope::now_ms() => {
                            state.next_delayed += 1;
                            let seq = state.next_delayed;
                            state
                                .queues
                                .entry(job.queue)
                                .or_default()
                                .delayed
                                .insert((due, seq), job.payload);
                        }
                        _ => state.append(&job.queue, job.payload),
                    }
                }
            }
            self.arrivals.notify_waiters();
            Ok(())
        })
    }

    fn promote_due<'a>(
        &'a self,
        queue: &'a str,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Promoted>> {
        Box::pin(async move {
            let promoted = {
                let mut state = self.lock();
                let mut due = Vec::new();
                if let Some(q) = state.queues.get_mut(queue) {
                    while due.len() < limit {
                        match q.delayed.first_key_value() {
                            Some((&(at, _), _)) if at <= now_ms => {
                                due.push(q.delayed.pop_first().expect("checked").1);
                            }
                            _ => break,
                        }
                    }
                }
                let moved = due.len();
                for payload in due {
                    state.append(queue, payload);
                }
                let next_due_ms = state
                    .queues
                    .get(queue)
                    .and_then(|q| q.delayed.first_key_value())
                    .map(|(&(at, _), _)| at);
                Promoted { moved, next_due_ms }
            };
            if promoted.moved > 0 {
                self.arrivals.notify_waiters();
            }
            Ok(promoted)
        })
    }

    fn fetch<'a>(
        &'a self,
        consumer: &'a str,
        queues: &'a [String],
        max: usize,
        block: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + block;
            loop {
                // Register interest before looking, so an arrival between the look and the wait
                // is not missed.
                let notified = self.arrivals.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let taken = self.take_ready(consumer, queues, max);
                if !taken.is_empty() {
                    return Ok(taken);
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Ok(Vec::new());
                }
            }
        })
    }

    fn reclaim<'a>(
        &'a self,
        consumer: &'a str,
        queue: &'a str,
        min_idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Delivery>>> {
        Box::pin(async move {
            let mut state = self.lock();
            let now = Instant::now();
            let mut out = Vec::new();
            if let Some(q) = state.queues.get_mut(queue) {
                let queue_name: Arc<str> = Arc::from(queue);
                let mut expired: Vec<&String> = q
                    .pending
                    .iter()
                    .filter(|(_, p)| now.duration_since(p.last_delivery) >= min_idle)
                    .map(|(id, _)| id)
                    .collect();
                expired.sort();
                let expired: Vec<String> = expired.into_iter().take(max).cloned().collect();
                for entry_id in expired {
                    let pending = q.pending.get_mut(&entry_id).expect("listed above");
                    pending.consumer = consumer.to_owned();
                    pending.last_delivery = now;
                    out.push(Delivery {
                        queue: queue_name.clone(),
                        entry_id,
                        payload: pending.payload.clone(),
                    });
                }
            }
            Ok(out)
        })
    }

    fn renew<'a>(
        &'a self,
        consumer: &'a str,
        queue: &'a str,
        entry_ids: &'a [String],
    ) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let mut state = self.lock();
            let now = Instant::now();
            let mut renewed = 0;
            if let Some(q) = state.queues.get_mut(queue) {
                for id in entry_ids {
                    if let Some(p) = q.pending.get_mut(id)
                        && p.consumer == consumer
                    {
                        p.last_delivery = now;
                        renewed += 1;
                    }
                }
            }
            Ok(renewed)
        })
    }

    fn apply<'a>(&'a self, writes: &'a [Write], ttl: Duration) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut finished = Vec::new();
            {
                let mut state = self.lock();
                let expires = Instant::now() + ttl;
                for write in writes {
                    match write {
                        Write::Record { id, record } => {
                            state
                                .records
                                .insert(id.to_string(), (record.clone(), expires));
                        }
                        Write::Settle(settlement) => {
                            if let Some((id, record)) = &settlement.record {
                                state
                                    .records
                                    .insert(id.to_string(), (record.clone(), expires));
                            }
                            if let Some(retry) = &settlement.retry {
                                state.next_delayed += 1;
                                let seq = state.next_delayed;
                                state
                                    .queues
                                    .entry(retry.queue.clone())
                                    .or_default()
                                    .delayed
                                    .insert(
                                        (retry.due_ms.unwrap_or(0), seq),
                                        retry.payload.clone(),
                                    );
                            }
                            if let Some(dead) = &settlement.dead {
                                state.dead.push(dead.clone());
                            }
                            if let Some(q) = state.queues.get_mut(&*settlement.queue) {
                                q.pending.remove(&settlement.entry_id);
                            }
                            finished.extend(settlement.finished.clone());
                        }
                    }
                }
            }
            for id in finished {
                // No receiver is not an error: nobody waits.
                let _ = self.finished.0.send(Arc::from(id.as_str()));
            }
            Ok(())
        })
    }

    fn load_record<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let mut state = self.lock();
            match state.records.get(id) {
                Some((_, expires)) if *expires <= Instant::now() => {
                    state.records.remove(id);
                    Ok(None)
                }
                Some((record, _)) => Ok(Some(record.clone())),
                None => Ok(None),
            }
        })
    }

    fn finished_events(&self) -> BoxFuture<'_, Result<broadcast::Receiver<Arc<str>>>> {
        Box::pin(async move { Ok(self.finished.0.subscribe()) })
    }

    fn retire_consumer<'a>(
        &'a self,
        _consumer: &'a str,
        _queues: &'a [String],
    ) -> BoxFuture<'a, Result<()>> {
        // Consumers are not stored apart from their pending entries here.
        Box::pin(async { Ok(()) })
    }
}
