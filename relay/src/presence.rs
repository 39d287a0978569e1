//! Presence in one room: the metas clients track, each owned by a local connection or by another
//! relay, and the diffs (joins, leaves) that tell subscribers what changed. An owner that goes
//! away (untrack, leave, a peer relay gone) leaves through one path, [`Presence::leave`].

use crate::outbox::ConnId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Where a presence meta comes from: a local connection's join, or another relay.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Owner {
    Local(ConnId, String),
    Peer(String),
}

struct Meta {
    owner: Owner,
    key: String,
    meta: Value,
}

/// The metas tracked under one presence key, as the Realtime protocol spells them.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
pub struct Metas {
    #[serde(default)]
    pub metas: Vec<Value>,
}

/// Presence by key: a `presence_state`, or one side of a diff.
pub type PresenceEntries = BTreeMap<String, Metas>;

/// A `presence_diff`; also what relays send each other about their own clients.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
pub struct PresenceDiff {
    #[serde(default)]
    pub joins: PresenceEntries,
    #[serde(default)]
    pub leaves: PresenceEntries,
}

impl PresenceDiff {
    pub fn to_value(&self) -> Value {
        json!(self)
    }
}

fn entries<'a>(metas: impl IntoIterator<Item = &'a Meta>) -> PresenceEntries {
    let mut by_key = PresenceEntries::new();
    for m in metas {
        by_key.entry(m.key.clone()).or_default().metas.push(m.meta.clone());
    }
    by_key
}

/// Metas are told apart by `phx_ref`, wherever they come from.
fn phx_ref(meta: &Value) -> &Value {
    &meta["phx_ref"]
}

#[derive(Default)]
pub struct Presence {
    metas: Vec<Meta>,
}

impl Presence {
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// Everyone's presence, for a client that joins the room.
    pub fn state(&self) -> PresenceEntries {
        entries(&self.metas)
    }

    /// The presence of this relay's own connections, for a state sync with the other relays.
    pub fn local_state(&self) -> PresenceEntries {
        entries(self.metas.iter().filter(|m| matches!(m.owner, Owner::Local(..))))
    }

    /// Tracks (or re-tracks) a connection's presence under `key`: the new meta in joins and, for
    /// an update, the old one in leaves.
    pub fn track(&mut self, owner: Owner, key: &str, mut state: Map<String, Value>) -> PresenceDiff {
        let previous = self.take(&owner);
        state.insert("phx_ref".to_owned(), json!(new_presence_ref()));
        if let Some(previous) = previous.first() {
            state.insert("phx_ref_prev".to_owned(), phx_ref(&previous.meta).clone());
        }
        let joined = Meta { owner, key: key.to_owned(), meta: Value::Object(state) };
        let diff = PresenceDiff { joins: entries([&joined]), leaves: entries(&previous) };
        self.metas.push(joined);
        diff
    }

    /// Everything `owner` tracked leaves; the diff to announce, if there was any.
    pub fn leave(&mut self, owner: &Owner) -> Option<PresenceDiff> {
        let gone = self.take(owner);
        (!gone.is_empty()).then(|| PresenceDiff { joins: PresenceEntries::new(), leaves: entries(&gone) })
    }

    /// A diff another relay announced for its clients: metas named in leaves go, those in joins
    /// come (or replace the meta with the same `phx_ref`).
    pub fn apply_peer_diff(&mut self, origin: &str, diff: &PresenceDiff) {
        for meta in diff.leaves.values().flat_map(|e| &e.metas) {
            self.metas.retain(|m| phx_ref(&m.meta) != phx_ref(meta));
        }
        for (key, entry) in &diff.joins {
            for meta in &entry.metas {
                self.metas.retain(|m| phx_ref(&m.meta) != phx_ref(meta));
                self.metas.push(Meta { owner: Owner::Peer(origin.to_owned()), key: key.clone(), meta: meta.clone() });
            }
        }
    }

    /// Replaces all of `origin`'s presence by `state` (a state sync); the difference, if any.
    pub fn replace_peer(&mut self, origin: &str, state: PresenceEntries) -> Option<PresenceDiff> {
        let owner = Owner::Peer(origin.to_owned());
        let old = self.take(&owner);
        let new: Vec<Meta> = state
            .into_iter()
            .flat_map(|(key, entry)| {
                let owner = owner.clone();
                entry.metas.into_iter().map(move |meta| Meta { owner: owner.clone(), key: key.clone(), meta })
            })
            .collect();
        let absent_from = |metas: &[Meta], m: &Meta| !metas.iter().any(|o| phx_ref(&o.meta) == phx_ref(&m.meta));
        let diff = PresenceDiff {
            joins: entries(new.iter().filter(|n| absent_from(&old, n))),
            leaves: entries(old.iter().filter(|o| absent_from(&new, o))),
        };
        self.metas.extend(new);
        (!diff.joins.is_empty() || !diff.leaves.is_empty()).then_some(diff)
    }

    /// Removes and returns `owner`'s metas, in the order they were tracked.
    fn take(&mut self, owner: &Owner) -> Vec<Meta> {
        let (gone, kept) = std::mem::take(&mut self.metas).into_iter().partition(|m| m.owner == *owner);
        self.metas = kept;
        gone
    }
}

fn new_presence_ref() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&uuid::Uuid::new_v4().as_bytes()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(conn: ConnId) -> Owner {
        Owner::Local(conn, "realtime:room".to_owned())
    }

    fn state(name: &str) -> Map<String, Value> {
        json!({ "name": name }).as_object().cloned().expect("an object")
    }

    fn metas<'a>(entries: &'a PresenceEntries, key: &str) -> &'a [Value] {
        entries.get(key).map_or(&[], |e| &e.metas)
    }

    /// A peer's meta as it arrives in a diff or a state sync.
    fn peer_entries(key: &str, phx_ref: &str) -> PresenceEntries {
        PresenceEntries::from([(key.to_owned(), Metas { metas: vec![json!({ "phx_ref": phx_ref })] })])
    }

    #[test]
    fn a_track_joins_with_a_fresh_ref() {
        let mut presence = Presence::default();
        let diff = presence.track(local(1), "ann", state("Ann"));
        assert!(diff.leaves.is_empty());
        let joined = &metas(&diff.joins, "ann")[0];
        assert_eq!(joined["name"], "Ann");
        assert!(joined["phx_ref"].as_str().is_some_and(|r| !r.is_empty()));
        assert_eq!(presence.state(), diff.joins);
    }

    #[test]
    fn a_second_track_replaces_the_first_and_names_it() {
        let mut presence = Presence::default();
        let first = presence.track(local(1), "ann", state("Ann"));
        let second = presence.track(local(1), "ann", state("Ann, away"));
        let first_ref = &metas(&first.joins, "ann")[0]["phx_ref"];
        assert_eq!(metas(&second.leaves, "ann"), metas(&first.joins, "ann"));
        assert_eq!(&metas(&second.joins, "ann")[0]["phx_ref_prev"], first_ref);
        assert_eq!(metas(&presence.state(), "ann").len(), 1);
    }

    #[test]
    fn an_owner_that_leaves_takes_only_its_own_metas() {
        let mut presence = Presence::default();
        presence.track(local(1), "ann", state("Ann"));
        presence.track(local(2), "ann", state("Ann on her phone"));
        let diff = presence.leave(&local(1)).expect("a diff");
        assert!(diff.joins.is_empty());
        assert_eq!(metas(&diff.leaves, "ann")[0]["name"], "Ann");
        assert_eq!(metas(&presence.state(), "ann")[0]["name"], "Ann on her phone");
        assert_eq!(presence.leave(&local(1)), None, "nothing left to announce");
    }

    #[test]
    fn a_peer_diff_adds_and_removes_by_ref() {
        let mut presence = Presence::default();
        presence.apply_peer_diff("b", &PresenceDiff { joins: peer_entries("bob", "r1"), ..Default::default() });
        assert_eq!(presence.state(), peer_entries("bob", "r1"));
        assert!(presence.local_state().is_empty(), "a peer's presence is not this relay's to sync");
        presence.apply_peer_diff("b", &PresenceDiff { leaves: peer_entries("bob", "r1"), ..Default::default() });
        assert!(presence.is_empty());
    }

    #[test]
    fn a_peer_that_leaves_takes_all_its_metas_and_no_local_ones() {
        let mut presence = Presence::default();
        presence.track(local(1), "ann", state("Ann"));
        let mut joins = peer_entries("bob", "r1");
        joins.extend(peer_entries("cat", "r2"));
        presence.apply_peer_diff("b", &PresenceDiff { joins, ..Default::default() });
        let diff = presence.leave(&Owner::Peer("b".into())).expect("a diff");
        assert_eq!(diff.leaves.keys().collect::<Vec<_>>(), ["bob", "cat"]);
        assert_eq!(presence.state().keys().collect::<Vec<_>>(), ["ann"]);
    }

    #[test]
    fn a_state_sync_announces_only_what_changed() {
        let mut presence = Presence::default();
        let mut synced = peer_entries("bob", "r1");
        synced.extend(peer_entries("cat", "r2"));
        let first = presence.replace_peer("b", synced.clone()).expect("a diff");
        assert_eq!(first.joins, synced);
        assert_eq!(presence.replace_peer("b", synced), None, "the same state again changes nothing");
        let diff = presence.replace_peer("b", peer_entries("bob", "r1")).expect("a diff");
        assert!(diff.joins.is_empty());
        assert_eq!(diff.leaves, peer_entries("cat", "r2"));
        assert_eq!(
            presence.replace_peer("b", PresenceEntries::new()).expect("a diff").leaves,
            peer_entries("bob", "r1")
        );
        assert!(presence.is_empty());
    }

    #[test]
    fn a_diff_is_spelled_as_the_realtime_protocol_wants() {
        let diff = PresenceDiff { joins: peer_entries("bob", "r1"), ..Default::default() };
        assert_eq!(diff.to_value(), json!({ "joins": { "bob": { "metas": [{ "phx_ref": "r1" }] } }, "leaves": {} }));
    }
}
