//! A container's log as the agent serves it (`GET /v1/pods/{name}/log`): what the container wrote to stdout
//! and stderr, read from a byte offset so that a follower asks again from where its last answer ended.

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
}

/// One read of a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The container read (the pod's only one when the query named none).
    pub container: String,
    /// The byte offset of `text`'s start.
    pub offset: u64,
    /// Where the next read starts: `offset` plus the bytes returned.
    pub next_offset: u64,
    /// The log's size when read; `next_offset < size` means there is more to read at once.
    pub size: u64,
    /// The bytes as UTF-8 (invalid bytes replaced; a character cut by the chunk's end shows as one).
    pub text: String,
}
