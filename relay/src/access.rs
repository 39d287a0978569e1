//! Whose rights changed in the database (`campfire_access`), and which sessions must check their
//! channels again: an index from the users and widget sessions that channels were joined as to
//! the connections holding them, so that a change wakes only the sessions it concerns.

use crate::outbox::ConnId;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use uuid::Uuid;

/// Changes a session may fall behind on before it re-checks all its channels.
const INBOX_LIMIT: usize = 256;

/// Whose rights changed: their joined channels are checked again. `Everyone` after the relay
/// may have missed some (LISTEN reconnected).
#[derive(Debug, Clone, PartialEq)]
pub enum AccessChange {
    User(String),
    WidgetSession(String),
    Everyone,
}

/// An id a change can name. Ids are uuids, as the database reads them: a `sub` in capitals names
/// the same user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(Uuid),
    WidgetSession(Uuid),
}

impl Key {
    /// The ids in a channel's claims.
    fn of_claims(claims: &Value) -> impl Iterator<Item = Key> {
        let id = |claim: &Value| claim.as_str().and_then(|text| Uuid::parse_str(text).ok());
        let user = id(&claims["sub"]).map(Key::User);
        let session = id(&claims["widget_session_id"]).map(Key::WidgetSession);
        user.into_iter().chain(session)
    }
}

impl AccessChange {
    /// The id this change names; `None` for `Everyone`, and for an id that is no uuid (it names
    /// nobody).
    fn key(&self) -> Option<Key> {
        match self {
            AccessChange::User(id) => Uuid::parse_str(id).ok().map(Key::User),
            AccessChange::WidgetSession(id) => Uuid::parse_str(id).ok().map(Key::WidgetSession),
            AccessChange::Everyone => None,
        }
    }

    /// Whether channels joined with these claims are concerned.
    pub fn concerns(&self, claims: &Value) -> bool {
        match self {
            AccessChange::Everyone => true,
            named => named.key().is_some_and(|key| Key::of_claims(claims).any(|k| k == key)),
        }
    }
}

/// The changes waiting for one session, and the wakeup that tells it.
#[derive(Default)]
struct Inbox {
    changes: Mutex<Vec<AccessChange>>,
    arrived: Notify,
}

impl Inbox {
    fn put(&self, change: &AccessChange) {
        let mut changes = self.changes.lock().unwrap();
        if changes.first() != Some(&AccessChange::Everyone) {
            if *change == AccessChange::Everyone || changes.len() >= INBOX_LIMIT {
                *changes = vec![AccessChange::Everyone];
            } else {
                changes.push(change.clone());
            }
        }
        drop(changes);
        self.arrived.notify_one();
    }
}

/// One connection in the index: its inbox, and the ids its channels were joined as (with how
/// many channels each).
struct Watcher {
    inbox: Arc<Inbox>,
    keys: HashMap<Key, usize>,
}

#[derive(Default)]
struct State {
    watchers: HashMap<ConnId, Watcher>,
    by_key: HashMap<Key, HashSet<ConnId>>,
}

#[derive(Default)]
pub struct AccessIndex {
    state: Mutex<State>,
}

impl AccessIndex {
    /// Enters a connection in the index until the returned handle is dropped.
    pub fn connect(self: &Arc<Self>, id: ConnId) -> AccessWatch {
        let inbox = Arc::new(Inbox::default());
        let watcher = Watcher { inbox: inbox.clone(), keys: HashMap::new() };
        self.state.lock().unwrap().watchers.insert(id, watcher);
        AccessWatch { index: self.clone(), id, inbox }
    }

    /// Tells the sessions `change` concerns; returns how many.
    pub fn send(&self, change: AccessChange) -> usize {
        let state = self.state.lock().unwrap();
        let concerned: Vec<&Watcher> = match change.key() {
            None if change == AccessChange::Everyone => state.watchers.values().collect(),
            None => Vec::new(),
            Some(key) => state.by_key.get(&key).into_iter().flatten().filter_map(|id| state.watchers.get(id)).collect(),
        };
        for watcher in &concerned {
            watcher.inbox.put(&change);
        }
        concerned.len()
    }

    fn watch(&self, id: ConnId, claims: &Value) {
        let mut state = self.state.lock().unwrap();
        let State { watchers, by_key } = &mut *state;
        let Some(watcher) = watchers.get_mut(&id) else { return };
        for key in Key::of_claims(claims) {
            let channels = watcher.keys.entry(key).or_default();
            *channels += 1;
            if *channels == 1 {
                by_key.entry(key).or_default().insert(id);
            }
        }
    }

    fn unwatch(&self, id: ConnId, claims: &Value) {
        let mut state = self.state.lock().unwrap();
        let State { watchers, by_key } = &mut *state;
        let Some(watcher) = watchers.get_mut(&id) else { return };
        for key in Key::of_claims(claims) {
            let Some(channels) = watcher.keys.get_mut(&key) else { continue };
            *channels -= 1;
            if *channels == 0 {
                watcher.keys.remove(&key);
                forget(by_key, key, id);
            }
        }
    }

    fn disconnect(&self, id: ConnId) {
        let mut state = self.state.lock().unwrap();
        let Some(watcher) = state.watchers.remove(&id) else { return };
        for key in watcher.keys.into_keys() {
            forget(&mut state.by_key, key, id);
        }
    }
}

fn forget(by_key: &mut HashMap<Key, HashSet<ConnId>>, key: Key, id: ConnId) {
    if let Some(ids) = by_key.get_mut(&key) {
        ids.remove(&id);
        if ids.is_empty() {
            by_key.remove(&key);
        }
    }
}

/// A connection's place in the [`AccessIndex`]: the ids of its channels are watched while they
/// are joined, and the connection leaves the index when this is dropped.
pub struct AccessWatch {
    index: Arc<AccessIndex>,
    id: ConnId,
    inbox: Arc<Inbox>,
}

impl AccessWatch {
    /// A channel was joined (or its token refreshed) with these claims.
    pub fn watch(&self, claims: &Value) {
        self.index.watch(self.id, claims);
    }

    /// A channel joined with these claims was left (or its token replaced).
    pub fn unwatch(&self, claims: &Value) {
        self.index.unwatch(self.id, claims);
    }

    /// The changes that arrived since the last call, once there is at least one (cancel safe:
    /// changes wait in the inbox until taken).
    pub async fn changes(&self) -> Vec<AccessChange> {
        self.inbox.arrived.notified().await;
        std::mem::take(&mut *self.inbox.changes.lock().unwrap())
    }
}

impl Drop for AccessWatch {
    fn drop(&mut self) {
        self.index.disconnect(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use serde_json::json;

    const USER: &str = "6f1c2b7e-8a4d-4f3e-9b2a-1c5d7e9f0a11";
    const SESSION: &str = "0b7e9c4a-2d1f-4e8b-a6c3-5f9d1e2b3c44";

    fn agent() -> Value {
        json!({ "role": "authenticated", "sub": USER })
    }

    fn visitor() -> Value {
        json!({ "role": "visitor", "widget_session_id": SESSION })
    }

    /// What a session would take from its inbox now, without waiting.
    fn pending(watch: &AccessWatch) -> Option<Vec<AccessChange>> {
        watch.changes().now_or_never()
    }

    #[test]
    fn a_change_reaches_only_the_connections_whose_channels_it_names() {
        let index = Arc::new(AccessIndex::default());
        let (a, b, idle) = (index.connect(1), index.connect(2), index.connect(3));
        a.watch(&agent());
        b.watch(&visitor());
        let change = AccessChange::User(USER.to_uppercase());
        assert_eq!(index.send(change.clone()), 1, "a user id in capitals names the same user");
        assert_eq!(pending(&a), Some(vec![change]));
        assert_eq!((pending(&b), pending(&idle)), (None, None));
        assert_eq!(index.send(AccessChange::WidgetSession(SESSION.into())), 1);
        assert_eq!(pending(&b), Some(vec![AccessChange::WidgetSession(SESSION.into())]));
        assert_eq!(index.send(AccessChange::User("not-a-uuid".into())), 0, "an id that is no uuid names nobody");
        assert_eq!(index.send(AccessChange::Everyone), 3, "everyone, even connections without channels");
        assert_eq!(pending(&idle), Some(vec![AccessChange::Everyone]));
    }

    #[test]
    fn an_id_is_watched_while_any_of_its_channels_is_joined() {
        let index = Arc::new(AccessIndex::default());
        let a = index.connect(1);
        a.watch(&agent());
        a.watch(&agent());
        a.unwatch(&agent());
        assert_eq!(index.send(AccessChange::User(USER.into())), 1, "one channel of the two is left");
        a.unwatch(&agent());
        assert_eq!(index.send(AccessChange::User(USER.into())), 0);
        assert!(index.state.lock().unwrap().by_key.is_empty());
    }

    #[test]
    fn a_dropped_connection_leaves_the_index() {
        let index = Arc::new(AccessIndex::default());
        let a = index.connect(1);
        a.watch(&json!({ "sub": USER, "widget_session_id": SESSION }));
        drop(a);
        assert_eq!(index.send(AccessChange::User(USER.into())), 0);
        assert_eq!(index.send(AccessChange::Everyone), 0);
        let state = index.state.lock().unwrap();
        assert!(state.watchers.is_empty() && state.by_key.is_empty());
    }

    #[test]
    fn a_session_that_falls_behind_checks_everything() {
        let index = Arc::new(AccessIndex::default());
        let a = index.connect(1);
        a.watch(&agent());
        for _ in 0..INBOX_LIMIT {
            index.send(AccessChange::User(USER.into()));
        }
        assert_eq!(pending(&a).map(|changes| changes.len()), Some(INBOX_LIMIT));
        for _ in 0..=INBOX_LIMIT {
            index.send(AccessChange::User(USER.into()));
        }
        assert_eq!(pending(&a), Some(vec![AccessChange::Everyone]));
        assert_eq!(pending(&a), None, "taken: nothing waits");
    }

    #[test]
    fn claims_name_their_user_and_widget_session() {
        let change = AccessChange::User(USER.into());
        assert!(change.concerns(&agent()));
        assert!(!change.concerns(&visitor()));
        assert!(AccessChange::WidgetSession(SESSION.into()).concerns(&visitor()));
        assert!(AccessChange::Everyone.concerns(&json!({})));
        assert!(!AccessChange::User("not-a-uuid".into()).concerns(&json!({ "sub": "not-a-uuid" })));
    }
}
