//! The Lua scripts of the Redis broker, one `.lua` file each beside this one (each opens with
//! what it does and its KEYS and ARGV), loaded once into [`Scripts`]. A function several
//! scripts need has a file of its own, put in front of each (`letter_bytes.lua`,
//! `add_job.lua`, `server_time.lua`).
//!
//! Architecture invariant: a script gets every key it touches in KEYS, never builds a key name
//! from ARGV, so that each call stays on the slot of its keys.

use redis::Script;

/// Every script, compiled in with `include_str!` and sent by hash (`EVALSHA`, falling back to
/// loading it once).
pub(super) struct Scripts {
    /// Moves due delayed jobs into the stream.
    pub(super) promote: Script,
    /// Adds a job with a fixed id once.
    pub(super) push_once: Script,
    /// Adds a job unless its unique lock is held, taking the lock.
    pub(super) push_unique: Script,
    /// Deletes a unique lock or a debounce key that holds the given job's id.
    pub(super) delete_if_holds: Script,
    /// Adds a job as the last of its debounce key.
    pub(super) push_debounced: Script,
    /// One GCRA rate-limit decision.
    pub(super) rate_acquire: Script,
    /// Takes or keeps a leased concurrency slot.
    pub(super) slot_acquire: Script,
    /// Extends a held concurrency slot's lease.
    pub(super) slot_renew: Script,
    /// Mark a job cancelled and drop the marks past their keep.
    pub(super) revoke: Script,
    /// Owner-checked lease renewal.
    pub(super) renew: Script,
    /// Takes over expired leases.
    pub(super) reclaim: Script,
    /// Reads new jobs of several queues within one budget.
    pub(super) fetch: Script,
    /// Applies a batch of fenced writes and acknowledgements.
    pub(super) settle: Script,
    /// Puts a dead letter back on its queue, once.
    pub(super) replay: Script,
    /// Deletes dead letters, all or older ones.
    pub(super) purge: Script,
    /// Deletes the dead letters of a list of entry ids.
    pub(super) dead_remove: Script,
    /// Removes consumers of dead workers that own nothing.
    pub(super) prune: Script,
    /// Removes this worker's consumer if it owns nothing.
    pub(super) retire: Script,
    /// Ready, pending and delayed jobs and consumers of queues.
    pub(super) queue_stats: Script,
    /// Length, trimmed and added counts of the dead letters.
    pub(super) dead_stats: Script,
    /// One compare-and-set pass of a schedule.
    pub(super) beat_advance: Script,
    /// The beat leader's lease.
    pub(super) beat_lease: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            promote: Script::new(include_str!("promote.lua")),
            push_once: Script::new(concat!(
                include_str!("add_job.lua"),
                include_str!("push_once.lua")
            )),
            push_unique: Script::new(concat!(
                include_str!("add_job.lua"),
                include_str!("push_unique.lua")
            )),
            delete_if_holds: Script::new(include_str!("delete_if_holds.lua")),
            push_debounced: Script::new(concat!(
                include_str!("add_job.lua"),
                include_str!("push_debounced.lua")
            )),
            rate_acquire: Script::new(concat!(
                include_str!("server_time.lua"),
                include_str!("rate_acquire.lua")
            )),
            slot_acquire: Script::new(concat!(
                include_str!("server_time.lua"),
                include_str!("slot_acquire.lua")
            )),
            slot_renew: Script::new(concat!(
                include_str!("server_time.lua"),
                include_str!("slot_renew.lua")
            )),
            revoke: Script::new(concat!(
                include_str!("server_time.lua"),
                include_str!("revoke.lua")
            )),
            renew: Script::new(include_str!("renew.lua")),
            reclaim: Script::new(include_str!("reclaim.lua")),
            fetch: Script::new(include_str!("fetch.lua")),
            settle: Script::new(concat!(
                include_str!("letter_bytes.lua"),
                include_str!("settle.lua")
            )),
            replay: Script::new(concat!(
                include_str!("letter_bytes.lua"),
                include_str!("replay.lua")
            )),
            purge: Script::new(concat!(
                include_str!("letter_bytes.lua"),
                include_str!("purge.lua")
            )),
            dead_remove: Script::new(concat!(
                include_str!("letter_bytes.lua"),
                include_str!("dead_remove.lua")
            )),
            prune: Script::new(include_str!("prune.lua")),
            retire: Script::new(include_str!("retire.lua")),
            queue_stats: Script::new(concat!(
                include_str!("server_time.lua"),
                include_str!("queue_stats.lua")
            )),
            dead_stats: Script::new(include_str!("dead_stats.lua")),
            beat_advance: Script::new(include_str!("beat_advance.lua")),
            beat_lease: Script::new(include_str!("beat_lease.lua")),
        }
    }
}
