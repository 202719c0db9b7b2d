//! The control loops that make the cluster keep what it was told: they watch the API and write to it, like
//! any other client, and run on one control-plane member at a time.

pub mod events;
pub mod node_lifecycle;
pub mod scheduler;

use std::sync::Arc;

use crate::client::Client;

pub use events::EventRecorder;

/// What every control loop gets: the API client, where to report what it did, and who it is.
#[derive(Clone)]
pub struct Context {
    /// The lab's API servers.
    pub client: Arc<Client>,
    /// Records Events for `kubectl describe`.
    pub events: EventRecorder,
    /// This member's identity (its node name), as leases and events name it.
    pub identity: String,
}

impl Context {
    /// The context of `identity`, reporting as `identity` too.
    pub fn new(client: Arc<Client>, identity: &str) -> Self {
        Self { events: EventRecorder::new(client.clone(), identity), client, identity: identity.to_string() }
    }
}
