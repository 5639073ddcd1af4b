//! Reading Redis replies into the seam's values, in RESP2 or RESP3 form, never trusting their
//! shape: an entry that does not parse is skipped or handed on for dead-lettering, not a panic.

use std::sync::Arc;

use redis::Value;

use crate::broker::Delivery;
use crate::keys::JOB_FIELD;

/// A reply of a shape the command never gives (a bug, or a server speaking another protocol).
pub(super) fn unexpected(command: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply shape",
        command.to_owned(),
    ))
}

/// A bulk or simple string as text.
pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[stream, entries]` pairs of an XREADGROUP reply, in RESP2 (array) or RESP3 (map) form.
pub(super) fn stream_pairs(reply: Value) -> Vec<(Option<Vec<u8>>, Value)> {
    let name = |v: Value| match v {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    };
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let entries = pair.pop().expect("len checked");
                    let stream = pair.pop().expect("len checked");
                    Some((name(stream), entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(k, v)| (name(k), v)).collect(),
        _ => Vec::new(),
    }
}

/// Entries `[id, [field, value, ...]]` into deliveries. An entry without a `job` field is
/// handed on with an empty payload, so that the worker dead-letters it instead of leaving it
/// pending forever.
pub(super) fn parse_entries(entries: Value, queue: &Arc<str>, out: &mut Vec<Delivery>) {
    let Value::Array(entries) = entries else {
        return;
    };
    out.reserve(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            continue;
        };
        // [id, fields] from XREADGROUP (a first delivery), [id, fields, deliveries] from the
        // reclaim script.
        let deliveries = match parts.len() {
            2 => 1,
            3 => match parts.pop() {
                Some(Value::Int(n)) => n.max(1) as u64,
                _ => continue,
            },
            _ => continue,
        };
        let fields = parts.pop().expect("len checked");
        let entry_id = match parts.pop() {
            Some(Value::BulkString(bytes)) => match String::from_utf8(bytes) {
                Ok(id) => id,
                Err(_) => continue,
            },
            Some(Value::SimpleString(id)) => id,
            _ => continue,
        };
        let mut payload = Vec::new();
        let mut fields = match fields {
            Value::Array(fields) => fields.into_iter(),
            _ => Vec::new().into_iter(),
        };
        while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
            if matches!(&field, Value::BulkString(f) if f == JOB_FIELD.as_bytes())
                && let Value::BulkString(bytes) = value
            {
                payload = bytes;
            }
        }
        out.push(Delivery {
            queue: queue.clone(),
            entry_id,
            payload,
            deliveries,
        });
    }
}

/// An array of ids as text.
pub(super) fn id_list(value: Value) -> Vec<String> {
    match value {
        Value::Array(ids) => ids.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

/// A stream entry's id and its (field, value) pairs.
pub(super) type Entry = (String, Vec<(String, Vec<u8>)>);

/// The entries of an XRANGE reply, skipping any of another shape.
pub(super) fn range_entries(reply: Value) -> Vec<Entry> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(mut parts) = entry else {
                return None;
            };
            let fields = parts.pop()?;
            let id = text(&parts.pop()?)?;
            let Value::Array(fields) = fields else {
                return None;
            };
            let mut pairs = Vec::with_capacity(fields.len() / 2);
            let mut fields = fields.into_iter();
            while let (Some(name), Some(Value::BulkString(value))) = (fields.next(), fields.next())
            {
                pairs.push((text(&name)?, value));
            }
            Some((id, pairs))
        })
        .collect()
}
