//! Between the webhook receiver and the delivery processor: the wake-up, and the events the
//! receiver already read out of the bodies it stored.
//!
//! The receiver parses every body before it stores it (to answer a malformed one with a 400), and
//! the processor needs that same event. Handing it over in memory spares the processor a read of
//! the body from the body log and a second parse, which was about a tenth of the server's CPU in
//! a webhook burst. The hand-over is only a shortcut: a delivery without an event here (queued
//! before a restart, retried after a failure, or offered while the inbox was full) is read from
//! the store as before, so nothing depends on it for correctness.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::forge::ForgeEvent;

/// Events held at most at once: the processor takes each as it starts on its delivery, so this
/// is reached only when it falls behind a burst; past it, deliveries go the store's way.
const MAX_HELD: usize = 4096;

#[derive(Default)]
pub struct Inbox {
    wake: Notify,
    events: Mutex<HashMap<String, ForgeEvent>>,
    /// How long stored deliveries waited before the processor took them up (from their
    /// receipt), for `/metrics`.
    pub lag: super::context::Durations,
}

fn key(forge: &str, id: &str) -> String {
    format!("{forge}\0{id}")
}

impl Inbox {
    /// Wakes the delivery processor.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    pub(super) async fn notified(&self) {
        self.wake.notified().await;
    }

    /// Holds the event of a delivery about to be stored. Returns whether it was taken: not when
    /// the inbox is full or already holds one for that delivery (a redelivery racing the first);
    /// a caller whose delivery then turns out not to be new `withdraw`s what it offered.
    pub fn offer(&self, forge: &str, id: &str, event: ForgeEvent) -> bool {
        let Ok(mut events) = self.events.lock() else {
            return false;
        };
        if events.len() >= MAX_HELD {
            return false;
        }
        match events.entry(key(forge, id)) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(event);
                true
            }
        }
    }

    /// Drops an offered event whose delivery was not stored as new.
    pub fn withdraw(&self, forge: &str, id: &str) {
        if let Ok(mut events) = self.events.lock() {
            events.remove(&key(forge, id));
        }
    }

    /// Whether the processor will find the delivery's event here (then it need not read the
    /// body).
    pub(super) fn holds(&self, forge: &str, id: &str) -> bool {
        self.events
            .lock()
            .is_ok_and(|events| events.contains_key(&key(forge, id)))
    }

    /// The delivery's event, taken out.
    pub(super) fn take(&self, forge: &str, id: &str) -> Option<ForgeEvent> {
        self.events.lock().ok()?.remove(&key(forge, id))
    }

    /// Events held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.events.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(n: usize) -> ForgeEvent {
        ForgeEvent::Ignored {
            reason: format!("event {n}"),
        }
    }

    #[test]
    fn an_event_is_taken_once_and_a_second_offer_for_its_delivery_is_refused() {
        let inbox = Inbox::default();
        assert!(inbox.offer("github", "a", ping(1)));
        assert!(
            !inbox.offer("github", "a", ping(2)),
            "the first offer stays"
        );
        assert!(inbox.holds("github", "a"));
        assert!(!inbox.holds("gitlab", "a"), "the forge is part of the key");
        assert_eq!(inbox.take("github", "a"), Some(ping(1)));
        assert_eq!(inbox.take("github", "a"), None);
        assert!(inbox.offer("github", "b", ping(3)));
        inbox.withdraw("github", "b");
        assert!(!inbox.holds("github", "b"));
    }

    #[test]
    fn a_full_inbox_refuses_offers_until_the_processor_takes_some() {
        let inbox = Inbox::default();
        for n in 0..MAX_HELD {
            assert!(inbox.offer("github", &n.to_string(), ping(n)));
        }
        assert!(!inbox.offer("github", "one more", ping(0)));
        assert_eq!(inbox.held(), MAX_HELD);
        assert!(inbox.take("github", "0").is_some());
        assert!(inbox.offer("github", "one more", ping(0)));
    }
}
