//! Live listeners: the one loop that follows the live bus for a purpose (a service's status
//! counters, durable consumers' wake-ups, identity entries reloads, revocations).
//!
//! A [`Listener`] subscribes when it is made (so nothing published afterwards is missed, even
//! before its task first runs), then hands its [`OnLive`] handler every message, tells it when it
//! fell behind and skipped some (live delivery is best effort: a handler that keeps state
//! re-reads it from the store then), optionally calls it every period (the periodic re-read that
//! covers messages lost while Redis was away), and stops at shutdown. A handler takes the
//! messages of its topics with [`Received::payload`], typed by the topic: a payload that does not
//! have its topic's shape is logged, counted (`hais_bus_undecodable_total`) and skipped.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};

use super::topics::LiveTopic;
use super::{Bus, BusMessage};

/// What the listeners of a process ran into, for `/metrics`.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Messages skipped because a listener fell more than `SUBSCRIBER_BUFFER` behind.
    pub lagged: AtomicU64,
    /// Messages of a topic a listener reads whose payload did not have the topic's shape.
    pub undecodable: AtomicU64,
}

/// What a listener does with what it is told. Every method runs on the listener's task, one
/// call at a time, so a handler needs no locking of its own state.
pub trait OnLive: Send + 'static {
    /// A message, of any topic: take those of yours with [`Received::payload`].
    fn message(&mut self, msg: Received<'_>) -> impl Future<Output = ()> + Send;

    /// `skipped` messages were lost to this listener because it fell behind (already logged and
    /// counted). A handler keeping state from the bus should re-read it from its source.
    fn lagged(&mut self, skipped: u64) -> impl Future<Output = ()> + Send {
        let _ = skipped;
        async {}
    }

    /// The period given to [`Listener::every`] passed.
    fn tick(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// One message as a listener's handler sees it: the message (through `Deref`), and the way to
/// read its payload.
#[derive(Debug)]
pub struct Received<'a> {
    msg: &'a BusMessage,
    listener: &'static str,
    counters: &'a LiveCounters,
}

impl Deref for Received<'_> {
    type Target = BusMessage;
    fn deref(&self) -> &BusMessage {
        self.msg
    }
}

impl Received<'_> {
    /// The payload if the message is of topic `T`. `None` for another topic, and for a message
    /// of `T` whose payload is not `T`'s (a process of another version, a bug), which is logged
    /// and counted rather than handled: one bad publisher must not stop a listener.
    pub fn payload<T: LiveTopic>(&self) -> Option<T::Payload> {
        match self.msg.decode::<T>()? {
            Ok(p) => Some(p),
            Err(e) => {
                self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    listener = self.listener,
                    topic = T::NAME,
                    origin = %self.msg.origin,
                    id = %self.msg.id,
                    error = %e,
                    "skipping a bus message whose payload does not match its topic"
                );
                None
            }
        }
    }
}

/// A task-to-be following the live bus; [`Listener::spawn`] starts it.
#[derive(Debug)]
#[must_use = "a listener does nothing until spawned"]
pub struct Listener {
    name: &'static str,
    rx: broadcast::Receiver<Arc<BusMessage>>,
    shutdown: watch::Receiver<bool>,
    counters: Arc<LiveCounters>,
    every: Option<Duration>,
}

impl Listener {
    /// Subscribes to `bus` now. `name` says what the listener is for, in logs.
    pub fn new(
        name: &'static str,
        bus: &dyn Bus,
        counters: Arc<LiveCounters>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Listener {
            name,
            rx: bus.subscribe(),
            shutdown,
            counters,
            every: None,
        }
    }

    /// Also calls [`OnLive::tick`] every `period`, the first time at once: a handler that
    /// re-reads its state on ticks thus also covers what changed between loading it and this
    /// subscription.
    pub fn every(mut self, period: Duration) -> Self {
        self.every = Some(period);
        self
    }

    /// Runs `handler` on its own task until shutdown (or until the bus is gone and there is no
    /// period to keep ticking).
    pub fn spawn(self, handler: impl OnLive) -> JoinHandle<()> {
        tokio::spawn(self.run(handler))
    }

    async fn run(self, mut handler: impl OnLive) {
        let Listener {
            name,
            rx,
            mut shutdown,
            counters,
            every,
        } = self;
        let mut rx = Some(rx);
        let mut ticks = every.map(|period| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        enum Next {
            Stop,
            Message(Result<Arc<BusMessage>, RecvError>),
            Tick,
        }
        while rx.is_some() || ticks.is_some() {
            let next = tokio::select! {
                () = stopped(&mut shutdown) => Next::Stop,
                m = recv(rx.as_mut()) => Next::Message(m),
                () = tick(ticks.as_mut()) => Next::Tick,
            };
            match next {
                Next::Stop => return,
                Next::Tick => handler.tick().await,
                Next::Message(Ok(msg)) => {
                    handler
                        .message(Received {
                            msg: &msg,
                            listener: name,
                            counters: &counters,
                        })
                        .await;
                }
                Next::Message(Err(RecvError::Lagged(skipped))) => {
                    counters.lagged.fetch_add(skipped, Ordering::Relaxed);
                    tracing::warn!(listener = name, skipped, "bus listener lagged");
                    handler.lagged(skipped).await;
                }
                // The bus is gone (the process is shutting down); ticks, if any, go on.
                Next::Message(Err(RecvError::Closed)) => rx = None,
            }
        }
    }
}

/// Resolves once shutdown is requested. Its output is a plain `()`, so a `select!` using it holds
/// no watch guard (which is not `Send`) while other branches await.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn recv(
    rx: Option<&mut broadcast::Receiver<Arc<BusMessage>>>,
) -> Result<Arc<BusMessage>, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick(ticks: Option<&mut Interval>) {
    match ticks {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::bus::topics::{EntriesAction, EntriesChange, IdentityEntries};
    use crate::bus::{SUBSCRIBER_BUFFER, publish};

    /// Forwards what it is told.
    struct Probe(mpsc::UnboundedSender<String>);

    impl OnLive for Probe {
        async fn message(&mut self, m: Received<'_>) {
            if let Some(p) = m.payload::<IdentityEntries>() {
                let _ = self
                    .0
                    .send(format!("entries {:?} {}", p.action, p.ids.join(",")));
            }
        }
        async fn lagged(&mut self, skipped: u64) {
            let _ = self.0.send(format!("lagged {skipped}"));
        }
        async fn tick(&mut self) {
            let _ = self.0.send("tick".into());
        }
    }

    fn raw(topic: &str, payload: &str) -> Arc<BusMessage> {
        Arc::new(BusMessage {
            id: uuid::Uuid::now_v7(),
            topic: topic.into(),
            origin: "other-version/1".into(),
            payload: serde_json::value::RawValue::from_string(payload.into()).unwrap(),
        })
    }

    fn change(id: &str) -> EntriesChange {
        EntriesChange {
            action: EntriesAction::Updated,
            ids: vec![id.into()],
        }
    }

    /// A [`Probe`] listening to `bus` (ticking every `every`): its counters, its shutdown
    /// switch, what it was told, its task.
    struct Probed {
        counters: Arc<LiveCounters>,
        stop: watch::Sender<bool>,
        told: mpsc::UnboundedReceiver<String>,
        task: JoinHandle<()>,
    }

    fn probe(bus: &MemoryBus, every: Option<Duration>) -> Probed {
        let counters = Arc::new(LiveCounters::default());
        let (stop, shutdown) = watch::channel(false);
        let (tx, told) = mpsc::unbounded_channel();
        let mut listener = Listener::new("test", bus, counters.clone(), shutdown);
        if let Some(period) = every {
            listener = listener.every(period);
        }
        Probed {
            counters,
            stop,
            told,
            task: listener.spawn(Probe(tx)),
        }
    }

    #[tokio::test]
    async fn a_payload_of_the_wrong_shape_is_counted_and_skipped() {
        let bus = MemoryBus::new();
        let mut p = probe(&bus, None);
        // Right name, wrong shape (an unknown action, ids not a list): skipped, counted.
        bus.publish(&raw(
            IdentityEntries::NAME,
            r#"{"action": "renamed", "ids": "e1"}"#,
        ))
        .await
        .unwrap();
        // Not JSON of any shape the topic knows either.
        bus.publish(&raw(IdentityEntries::NAME, "42"))
            .await
            .unwrap();
        // Another topic is none of this listener's business, whatever it carries.
        bus.publish(&raw("agent.revoked", r#"{"nothing": "like it"}"#))
            .await
            .unwrap();
        // The listener is still there for the next good message.
        publish::<IdentityEntries>(&bus, "test/1", &change("e2"))
            .await
            .unwrap();
        assert_eq!(p.told.recv().await.unwrap(), "entries Updated e2");
        assert_eq!(p.counters.undecodable.load(Ordering::Relaxed), 2);
        assert!(!p.task.is_finished());
    }

    #[tokio::test]
    async fn lag_is_reported_and_shutdown_stops_it() {
        let bus = MemoryBus::new();
        let mut p = probe(&bus, None);
        // The listener's task cannot run between these (one thread, no await that yields): it
        // finds more than its buffer waiting.
        let extra = 10;
        for i in 0..SUBSCRIBER_BUFFER + extra {
            let m = Arc::new(
                BusMessage::encode::<IdentityEntries>("t/1", &change(&i.to_string())).unwrap(),
            );
            bus.publish(&m).await.unwrap();
        }
        assert_eq!(p.told.recv().await.unwrap(), format!("lagged {extra}"));
        assert_eq!(p.counters.lagged.load(Ordering::Relaxed), extra as u64);
        assert_eq!(
            p.told.recv().await.unwrap(),
            format!("entries Updated {extra}"),
            "it goes on with the oldest message still buffered"
        );
        p.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), p.task)
            .await
            .expect("the listener stops at shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn ticks_every_period_and_outlives_the_bus() {
        let bus = MemoryBus::new();
        let mut p = probe(&bus, Some(Duration::from_millis(20)));
        drop(bus);
        for _ in 0..2 {
            assert_eq!(p.told.recv().await.unwrap(), "tick");
        }
        assert!(!p.task.is_finished());
        p.task.abort();
    }
}
