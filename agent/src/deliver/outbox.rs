//! One task per exporter delivers its queue in order: the oldest payload
//! is sent until it is delivered or rejected; a backend that is away is
//! retried with exponential backoff and jitter (or as long as it asks with
//! Retry-After). On shutdown the task drains what it can, then ends.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tokio::sync::{Notify, watch};

use crate::{
    deliver::retention::ExportQueue,
    deliver::{otlp::OtlpClient, pyroscope::PyroscopeClient, send::SendError},
    telemetry::{Delivery, Telemetry},
};

pub enum Backend {
    Otlp(OtlpClient),
    Pyroscope(PyroscopeClient),
}

impl Backend {
    async fn send(&self, payload: Bytes) -> Result<(), SendError> {
        match self {
            Self::Otlp(client) => client.send(payload).await,
            Self::Pyroscope(client) => client.send(payload).await,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Half the step plus a random part of the other half, so agents that
    /// lost the same backend do not return in lockstep.
    fn jittered(step: Duration) -> Duration {
        step / 2 + step.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// An exporter's queue and the means to wake its task.
#[derive(Clone)]
pub struct Outbox {
    pub name: &'static str,
    pub queue: Arc<Mutex<ExportQueue>>,
    pub wake: Arc<Notify>,
}

impl Outbox {
    pub fn update_gauges(&self, telemetry: &Telemetry) {
        let queue = self.queue.lock().expect("queue lock");
        let age = queue.oldest_age(SystemTime::now());
        telemetry.record_queue(self.name, queue.bytes(), queue.len(), age);
    }

    /// Queues a payload and wakes the task; what the bounds drop is counted.
    pub fn push(&self, payload: Bytes, telemetry: &Telemetry) {
        let dropped = self
            .queue
            .lock()
            .expect("queue lock")
            .push(payload, SystemTime::now());
        if dropped.any() {
            tracing::warn!(
                exporter = self.name,
                over_bytes = dropped.over_bytes,
                too_old = dropped.too_old,
                "queue bound reached: oldest profiles dropped"
            );
        }
        if dropped.unspooled > 0 {
            tracing::info!(
                exporter = self.name,
                unspooled = dropped.unspooled,
                "spool bound reached: the oldest queued profiles are now kept in memory only"
            );
        }
        telemetry.record_dropped(self.name, dropped);
        self.update_gauges(telemetry);
        self.wake.notify_one();
    }
}

/// Longest wait between attempts once shutdown has begun: the last window
/// gets several tries within the shutdown deadline without hammering a
/// backend that is down.
const SHUTDOWN_RETRY: Duration = Duration::from_millis(500);

/// Delivers `outbox` through `backend` until `closing` turns true and the
/// queue is empty.
pub async fn deliver(
    outbox: Outbox,
    backend: Backend,
    backoff: Backoff,
    telemetry: Arc<Telemetry>,
    mut closing: watch::Receiver<bool>,
) {
    let mut step = backoff.initial;
    let mut failing = false;
    loop {
        let next = {
            let mut queue = outbox.queue.lock().expect("queue lock");
            let dropped = queue.enforce(SystemTime::now());
            telemetry.record_dropped(outbox.name, dropped);
            queue.front().cloned()
        };
        outbox.update_gauges(&telemetry);
        let Some(item) = next else {
            if *closing.borrow() {
                return;
            }
            tokio::select! {
                () = outbox.wake.notified() => {}
                _ = closing.changed() => {}
            }
            continue;
        };
        match backend.send(item.payload.clone()).await {
            Ok(()) => {
                outbox.queue.lock().expect("queue lock").remove(item.seq);
                telemetry.record_delivery(outbox.name, Delivery::Delivered);
                if failing {
                    tracing::info!(exporter = outbox.name, "export recovered");
                    failing = false;
                }
                step = backoff.initial;
            }
            Err(SendError::Rejected(reason)) => {
                outbox.queue.lock().expect("queue lock").remove(item.seq);
                telemetry.record_delivery(outbox.name, Delivery::Rejected);
                tracing::error!(exporter = outbox.name, %reason, "the backend rejected a profile");
            }
            Err(SendError::Retryable {
                reason,
                retry_after,
            }) => {
                telemetry.record_delivery(outbox.name, Delivery::Retrying);
                let wait = retry_after.unwrap_or_else(|| Backoff::jittered(step));
                if !failing {
                    let queued = outbox.queue.lock().expect("queue lock").len();
                    tracing::warn!(
                        exporter = outbox.name,
                        %reason,
                        queued,
                        "export failing; profiles stay queued and are retried in order"
                    );
                    failing = true;
                }
                step = (step * 2).min(backoff.max);
                if *closing.borrow() {
                    // Shutting down: keep trying, more often than the backoff
                    // would, until the deadline ends us.
                    tokio::time::sleep(wait.min(SHUTDOWN_RETRY)).await;
                } else {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = closing.changed() => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_the_whole_step() {
        let step = Duration::from_secs(8);
        for _ in 0..1000 {
            let wait = Backoff::jittered(step);
            assert!(wait >= step / 2 && wait <= step, "{wait:?}");
        }
    }
}
