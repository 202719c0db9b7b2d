//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it: a
//! candidate takes the Lease when it is free or its holder has not renewed it for `leaseDurationSeconds`
//! (timed by this candidate's own clock from when it last saw the Lease change, so clock skew between
//! members does not matter), renews it every retry period, and counts itself deposed when no renewal
//! succeeded within the renew deadline. Writes carry the Lease's resourceVersion: of two candidates
//! writing at once, one gets 409 and stays a candidate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use testbed_api::objects::{Lease, LeaseSpec, ObjectMeta};

use crate::client::{now_rfc3339_micro, paths, Client, ClientError};

/// The timings (client-go's defaults, as kube-controller-manager uses them).
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long a Lease holds without renewal (`leaseDurationSeconds`): 15 s.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up: 10 s.
    pub renew_deadline: Duration,
    /// How often candidates try and the leader renews: 2 s.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate for the Lease `namespace/name`.
pub struct Elector {
    client: Arc<Client>,
    identity: String,
    namespace: String,
    name: String,
    timing: Timing,
    /// The Lease as last seen, and when (this candidate's clock) it last changed.
    observed: Option<(LeaseSpec, Instant)>,
    /// When this candidate last took or renewed the Lease. [`Elector::hold`] times its renewals from here
    /// rather than from its own start: the manager polls a fresh `hold` after every loop restart and
    /// back-off pause, and with the timer restarting each time, restarts 1-2 s apart kept the Lease from
    /// being renewed at all (found by tests/manager_restart.rs).
    renewed: Instant,
}

impl Elector {
    /// A candidate named `identity` for the Lease `namespace/name`.
    pub fn new(client: Arc<Client>, identity: &str, namespace: &str, name: &str, timing: Timing) -> Self {
        Self {
            client,
            identity: identity.into(),
            namespace: namespace.into(),
            name: name.into(),
            timing,
            observed: None,
            renewed: Instant::now(),
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: lease not acquired"),
            }
            // client-go's JitterUntil: up to 20% more, so candidates do not move in step.
            let jitter = self.timing.retry_period.mul_f64(rand::random::<f64>() * 0.2);
            tokio::time::sleep(self.timing.retry_period + jitter).await;
        }
    }

    /// Renews the Lease a retry period after the last renewal; returns when a renewal did not succeed within
    /// the renew deadline (leadership is lost: the caller stops at once). Dropped and called again, it keeps
    /// the same schedule.
    pub async fn hold(&mut self) {
        loop {
            let due = self.renewed + self.timing.retry_period;
            tokio::time::sleep_until(due.into()).await;
            let deadline = due + self.timing.renew_deadline;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                    Ok(Ok(true)) => break,
                    Ok(Ok(false)) => tracing::warn!("leader election: the lease was taken over"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "leader election: renewal failed"),
                    Err(_) => {}
                }
                if Instant::now() + self.timing.retry_period >= deadline {
                    return;
                }
                tokio::time::sleep(self.timing.retry_period).await;
            }
        }
    }

    /// Gives the Lease up (an empty holder, 1 s duration) so a standby takes over at its next try instead
    /// of waiting the Lease out, as client-go's `ReleaseOnCancel`.
    pub async fn release(&mut self) {
        let path = paths::lease(&self.namespace, &self.name);
        let Ok(mut lease) = self.client.get::<Lease>(&path).await else { return };
        if lease.spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        let now = now_rfc3339_micro();
        lease.spec = LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: lease.spec.lease_transitions,
        };
        if let Err(e) = self.client.update(&path, &lease).await {
            tracing::warn!(error = %e, "leader election: lease not released");
        }
    }

    /// One attempt (`tryAcquireOrRenew`): whether this candidate holds the Lease now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, ClientError> {
        let path = paths::lease(&self.namespace, &self.name);
        let now = now_rfc3339_micro();
        let duration = Some(self.timing.lease_duration.as_secs() as i32);
        let mut lease = match self.client.get::<Lease>(&path).await {
            Ok(lease) => lease,
            Err(e) if e.is_not_found() => {
                let lease = Lease {
                    api_version: "coordination.k8s.io/v1".into(),
                    kind: "Lease".into(),
                    metadata: ObjectMeta {
                        name: self.name.clone(),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: duration,
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                    },
                };
                return match self.client.create(&paths::leases(&self.namespace), &lease).await {
                    Ok(created) => {
                        self.observed = Some((created.spec, Instant::now()));
                        self.renewed = Instant::now();
                        Ok(true)
                    }
                    Err(e) if e.is_conflict() => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        if self.observed.as_ref().is_none_or(|(spec, _)| *spec != lease.spec) {
            self.observed = Some((lease.spec.clone(), Instant::now()));
        }
        let holder = lease.spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let held_for = Duration::from_secs(lease.spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        let seen = self.observed.as_ref().map_or_else(Instant::now, |(_, at)| *at);
        if !holder.is_empty() && !ours && seen.elapsed() < held_for {
            return Ok(false);
        }
        let transitions = lease.spec.lease_transitions.unwrap_or(0);
        lease.spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: duration,
            acquire_time: if ours { lease.spec.acquire_time.clone() } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        };
        match self.client.update(&path, &lease).await {
            Ok(updated) => {
                self.observed = Some((updated.spec, Instant::now()));
                self.renewed = Instant::now();
                Ok(true)
            }
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }
}
