//! Revocation: why a job that will never run was recorded REVOKED. Pure: the worker decides,
//! the record carries the reason, and a waiting client reports it.

use crate::wire::{wire_enum, wire_serde};

wire_enum! {
    /// Why a job was revoked: never run, and recorded REVOKED.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum RevokeReason {
        /// Its expiry (`EnqueueOptions::expires`) passed before a worker started it.
        Expired => "expired",
        /// A later enqueue with the same debounce key (`EnqueueOptions::debounce`) replaced it
        /// within the window.
        Superseded => "superseded",
        /// It was cancelled (`Client::cancel`) before a worker started it.
        Cancelled => "cancelled",
        /// A reason this version does not know, written by a newer one.
        Unknown => "unknown",
    }
}

wire_serde!(RevokeReason, Unknown);
