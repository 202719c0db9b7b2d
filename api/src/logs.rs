//! A container's log as the agent serves it (`GET /v1/pods/{name}/log`): what the container wrote to stdout
//! and stderr, read from a byte offset so that a follower asks again from where its last answer ended. As the
//! kubelet keeps them, a log belongs to one instance of the container: a restart starts a new one and keeps
//! the last instance's as the previous log.

use serde::{Deserialize, Serialize};

/// Query of a log read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// The container; may be left out when the pod has only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// First byte to return (0 when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The log of the container's previous instance (the one before its last restart), as `kubectl logs
    /// --previous` reads it, instead of the running one's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub previous: bool,
}

/// One read of a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The container read (the pod's only one when the query named none).
    pub container: String,
    /// Which instance of the container wrote this log: its restart count when it started. A follower whose
    /// next answer names another instance starts that one's log from its beginning.
    #[serde(default)]
    pub restart_count: u32,
    /// The byte offset of `text`'s start.
    pub offset: u64,
    /// Where the next read starts: `offset` plus the bytes returned.
    pub next_offset: u64,
    /// The log's size when read; `next_offset < size` means there is more to read at once.
    pub size: u64,
    /// The bytes as UTF-8 (invalid bytes replaced; a character cut by the chunk's end shows as one).
    pub text: String,
}
