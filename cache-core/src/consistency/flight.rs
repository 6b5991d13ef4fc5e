//! In-process single-flight: concurrent misses of one key run one load.
//!
//! The leader holds a [`Leader`] guard. When it finishes it publishes the
//! encoded value (or "nothing to share", e.g. the body returned `Err`). If the
//! leader panics or its future is dropped, the guard's `Drop` removes the
//! flight and the channel closes, so waiters retry instead of hanging.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What a leader publishes: the encoded stored value, or `None` when its
/// result is not shareable (not cacheable, or an error).
pub(crate) type Outcome = Option<Arc<[u8]>>;

struct Flight {
    tx: watch::Sender<Option<Outcome>>,
    /// Set when the leader starts storing (or reading another process's
    /// value). A caller joining after that may have started after an
    /// invalidation that the leader's value predates, so it must not take the
    /// value: it waits for the flight to end and reads the cache again.
    sealed: AtomicBool,
}

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Arc<Flight>>>,
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    /// Wait for the leader's value.
    Follower(watch::Receiver<Option<Outcome>>),
    /// Joined after the leader sealed the flight: wait for it to end, then read again.
    Late(watch::Receiver<Option<Outcome>>),
}

pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    flight: Arc<Flight>,
}

/// Why a follower did not get a value.
pub(crate) enum Waited {
    /// The leader published this.
    Done(Outcome),
    /// The leader vanished (panic or cancellation): try again.
    LeaderGone,
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = map.get(key) {
            let rx = flight.tx.subscribe();
            return if flight.sealed.load(Ordering::Acquire) {
                Role::Late(rx)
            } else {
                Role::Follower(rx)
            };
        }
        let (tx, _) = watch::channel(None);
        let flight = Arc::new(Flight {
            tx,
            sealed: AtomicBool::new(false),
        });
        map.insert(key.to_owned(), flight.clone());
        Role::Leader(Leader {
            flights: self,
            key: key.to_owned(),
            flight,
        })
    }

    /// An invalidation of `key` returned: callers that join its flight from
    /// now on must not be handed the load in progress (it may have read the
    /// data before the change), so they wait for it and then read again.
    pub(crate) fn seal(&self, key: &str) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = map.get(key) {
            flight.sealed.store(true, Ordering::Release);
        }
    }

    /// [`seal`](Self::seal) for every flight whose key starts with `head`.
    pub(crate) fn seal_all(&self, head: &str) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (key, flight) in map.iter() {
            if key.starts_with(head) {
                flight.sealed.store(true, Ordering::Release);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

pub(crate) async fn wait(mut rx: watch::Receiver<Option<Outcome>>) -> Waited {
    loop {
        if let Some(outcome) = rx.borrow_and_update().clone() {
            return Waited::Done(outcome);
        }
        if rx.changed().await.is_err() {
            // Sender gone: maybe it published just before dropping.
            return match rx.borrow().clone() {
                Some(outcome) => Waited::Done(outcome),
                None => Waited::LeaderGone,
            };
        }
    }
}

impl Leader<'_> {
    /// From now on, callers that join must re-read instead of taking the value.
    pub(crate) fn seal(&self) {
        self.flight.sealed.store(true, Ordering::Release);
    }

    /// Publishes the outcome to every waiter and ends the flight.
    pub(crate) fn finish(self, outcome: Outcome) {
        self.flight.tx.send_replace(Some(outcome));
        // Drop removes the flight.
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.map.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_value_and_survive_a_dropped_leader() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else {
            panic!()
        };
        let Role::Follower(rx) = flights.join("k") else {
            panic!()
        };
        leader.finish(Some(Arc::from(&b"v"[..])));
        assert!(matches!(wait(rx).await, Waited::Done(Some(v)) if &*v == b"v"));
        assert_eq!(flights.len(), 0);

        let Role::Leader(leader) = flights.join("k") else {
            panic!()
        };
        let Role::Follower(rx) = flights.join("k") else {
            panic!()
        };
        drop(leader);
        assert!(matches!(wait(rx).await, Waited::LeaderGone));
        assert!(matches!(flights.join("k"), Role::Leader(_)));
    }
}
