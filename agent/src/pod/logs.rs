//! Containers' logs: each container's stdout and stderr go to `<container>.log` in its pod's directory
//! (removed with the pod); a restart moves it to `<container>.previous.log` (`supervise`), so that, as with
//! the kubelet, the log is the running instance's and the one before it stays readable (`--previous`).
//! `testbed logs` reads them in chunks from an offset.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};

use testbed_api::{ApiError, LogChunk, LogQuery};

use super::{io, lock, Agent, AgentError, Result};

/// At most this much per answer: a reader asks again from `next_offset`.
const CHUNK_BYTES: u64 = 1 << 20;

impl Agent {
    /// A chunk of the log of `query.container` (the pod's only container when it names none).
    pub fn container_log(&self, pod: &str, query: &LogQuery) -> Result<LogChunk> {
        let p = self.find(pod)?;
        let names: Vec<&str> = p.spec.containers.iter().map(|c| c.name.as_str()).collect();
        let invalid = |message: String| {
            AgentError::Invalid(ApiError { field: Some("container".into()), message, leaked: vec![] })
        };
        let container = match (&query.container, names.as_slice()) {
            (Some(name), _) if names.contains(&name.as_str()) => name.clone(),
            (Some(name), _) => {
                return Err(invalid(format!("pod `{pod}` has no container `{name}`; it has {}", names.join(", "))))
            }
            (None, [only]) => only.to_string(),
            (None, _) => {
                return Err(invalid(format!("pod `{pod}` has several containers; choose one of {}", names.join(", "))))
            }
        };
        let offset = query.offset.unwrap_or(0);
        // The file and the instance it belongs to are read together: a restart moves the log under this lock.
        let (opened, restart_count, path) = {
            let rec = lock(&p.record);
            let count = rec.containers.iter().find(|c| c.name == container).map_or(0, |c| c.restart_count);
            let (path, count) = match (query.previous, count) {
                // As kubectl words it (a 400): there is no instance before this one.
                (true, 0) => {
                    return Err(AgentError::Invalid(ApiError {
                        field: Some("previous".into()),
                        message: format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
                        leaked: vec![],
                    }))
                }
                (true, n) => (self.previous_log_path(pod, &container), n - 1),
                (false, n) => (self.log_path(pod, &container), n),
            };
            (File::open(&path), count, path)
        };
        let mut file = match opened {
            Ok(file) => file,
            // Not started yet, or an instance that never opened its log (a failed start): nothing written.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(LogChunk {
                    container,
                    restart_count,
                    offset: 0,
                    next_offset: 0,
                    size: 0,
                    text: String::new(),
                })
            }
            Err(e) => return Err(io(format!("open {}", path.display()))(e)),
        };
        let size = file.metadata().map_err(io(format!("stat {}", path.display())))?.len();
        let from = offset.min(size);
        file.seek(SeekFrom::Start(from)).map_err(io(format!("seek {}", path.display())))?;
        let mut bytes = Vec::new();
        file.take(CHUNK_BYTES).read_to_end(&mut bytes).map_err(io(format!("read {}", path.display())))?;
        let next_offset = from + bytes.len() as u64;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(LogChunk { container, restart_count, offset: from, next_offset, size, text })
    }
}
