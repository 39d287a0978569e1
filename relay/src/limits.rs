//! Abuse limits: open connections per client address and per credential, and what one
//! connection may do per window (joins, heartbeats, broadcasts); the HTTP API's limits count the
//! same way. Every count lives in this relay process only: N relays behind a load balancer admit
//! up to N times each limit.

use crate::auth::Identity;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most `limit` events per `window`, counted in fixed windows.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub limit: u32,
    pub window: Duration,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} per {} ms", self.limit, self.window.as_millis())
    }
}

/// One fixed window's count of a [`Rate`].
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window { start: now, count: 0 }
    }

    /// Counts one event; over the limit, the time until the window ends.
    fn hit(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.duration_since(self.start);
        if elapsed >= rate.window {
            *self = Window::new(now);
        }
        self.count += 1;
        if self.count > rate.limit {
            return Err(rate.window.saturating_sub(now.duration_since(self.start)));
        }
        Ok(())
    }
}

/// A [`Rate`] for each key (an address, a widget session).
pub struct KeyedRate {
    rate: Rate,
    windows: Mutex<HashMap<String, Window>>,
}

/// Keys a [`KeyedRate`] holds before it forgets those whose window is over.
const KEYS_BEFORE_SWEEP: usize = 100_000;

impl KeyedRate {
    pub fn new(limit: u32, window: Duration) -> KeyedRate {
        KeyedRate { rate: Rate { limit, window }, windows: Mutex::new(HashMap::new()) }
    }

    /// Counts one call for `key`; over the limit, the time until it may call again.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("rate windows lock");
        if windows.len() > KEYS_BEFORE_SWEEP {
            windows.retain(|_, w| now.duration_since(w.start) < self.rate.window);
        }
        windows.entry(key.to_owned()).or_insert_with(|| Window::new(now)).hit(self.rate, now)
    }
}

/// What one connection may do per window.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionRates {
    pub joins: Rate,
    pub heartbeats: Rate,
    pub broadcasts: Rate,
}

/// One connection's counts against its [`ConnectionRates`].
pub struct ConnectionUsage {
    rates: ConnectionRates,
    joins: Window,
    heartbeats: Window,
    broadcasts: Window,
}

/// What a connection did too often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Join,
    Heartbeat,
    Broadcast,
}

impl Action {
    /// The `limit` label of `campfire_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            Action::Join => "joins",
            Action::Heartbeat => "heartbeats",
            Action::Broadcast => "broadcasts",
        }
    }
}

impl ConnectionUsage {
    pub fn new(rates: ConnectionRates) -> ConnectionUsage {
        let now = Instant::now();
        ConnectionUsage { rates, joins: Window::new(now), heartbeats: Window::new(now), broadcasts: Window::new(now) }
    }

    /// Counts one `action`; over its rate, the reason to give (the limit, and when to retry).
    pub fn hit(&mut self, action: Action) -> Result<(), String> {
        let (window, rate) = match action {
            Action::Join => (&mut self.joins, self.rates.joins),
            Action::Heartbeat => (&mut self.heartbeats, self.rates.heartbeats),
            Action::Broadcast => (&mut self.broadcasts, self.rates.broadcasts),
        };
        window.hit(rate, Instant::now()).map_err(|retry| {
            format!("too many {} on this connection (limit {rate}); retry in {} ms", action.label(), retry.as_millis())
        })
    }
}

/// Who holds open connections: a client address, or a credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holder {
    Address(IpAddr),
    Credential(String),
}

/// Open connections per client address and per credential.
pub struct OpenConnections {
    per_address: u32,
    per_credential: u32,
    open: Mutex<HashMap<Holder, u32>>,
}

/// A connection that was refused: the reason to answer with, and the `limit` label.
#[derive(Debug, PartialEq)]
pub struct Refused {
    pub reason: String,
    pub label: &'static str,
}

impl OpenConnections {
    pub fn new(per_address: u32, per_credential: u32) -> Arc<OpenConnections> {
        Arc::new(OpenConnections { per_address, per_credential, open: Mutex::new(HashMap::new()) })
    }

    /// A place for one more connection from `address`, held until the slot is dropped.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut slot = ConnectionSlot { open: self.clone(), holders: Vec::new() };
        self.take(&mut slot, Holder::Address(address_key(address)), self.per_address, "connections_per_address")?;
        Ok(slot)
    }

    /// Counts the slot's connection against its credential too (a token without a user or a
    /// widget session counts against its address only).
    pub fn admit_credential(&self, slot: &mut ConnectionSlot, identity: &Identity) -> Result<(), Refused> {
        match credential_key(identity) {
            Some(key) => self.take(slot, Holder::Credential(key), self.per_credential, "connections_per_credential"),
            None => Ok(()),
        }
    }

    fn take(&self, slot: &mut ConnectionSlot, holder: Holder, limit: u32, label: &'static str) -> Result<(), Refused> {
        let mut open = self.open.lock().expect("open connections lock");
        let count = open.entry(holder.clone()).or_default();
        if *count >= limit {
            let whose = match holder {
                Holder::Address(_) => "this address",
                Holder::Credential(_) => "this credential",
            };
            let reason = format!("ConnectionRateLimitReached: too many connections from {whose} (limit {limit})");
            return Err(Refused { reason, label });
        }
        *count += 1;
        slot.holders.push(holder);
        Ok(())
    }

    fn release(&self, holders: &[Holder]) {
        let mut open = self.open.lock().expect("open connections lock");
        for holder in holders {
            if let Some(count) = open.get_mut(holder) {
                *count -= 1;
                if *count == 0 {
                    open.remove(holder);
                }
            }
        }
    }
}

/// One admitted connection's place; dropping it frees the place.
pub struct ConnectionSlot {
    open: Arc<OpenConnections>,
    holders: Vec<Holder>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.release(&self.holders);
    }
}

/// IPv6 addresses count by their /64: one subscriber is handed a whole /64, and would otherwise
/// hold as many addresses as it likes.
fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Whose credential this is: its widget session, else its user (a uuid in any case); none for
/// tokens that name neither (anon, service_role).
fn credential_key(identity: &Identity) -> Option<String> {
    let id = |claim: &serde_json::Value| {
        claim.as_str().map(|text| uuid::Uuid::parse_str(text).map_or_else(|_| text.to_owned(), |u| u.to_string()))
    };
    let claims = &identity.claims;
    id(&claims["widget_session_id"])
        .map(|s| format!("visitor:{s}"))
        .or_else(|| id(&claims["sub"]).map(|s| format!("user:{s}")))
}

/// The limits of this relay process.
pub struct Limits {
    pub connections: Arc<OpenConnections>,
    pub per_connection: ConnectionRates,
    /// New widget sessions per client address.
    pub sessions_per_address: KeyedRate,
    /// Messages a widget session sends through the HTTP API.
    pub messages_per_session: KeyedRate,
}

impl Limits {
    pub fn new(config: &crate::config::LimitConfig) -> Limits {
        let window = Duration::from_millis(config.rate_window_ms);
        let rate = |limit| Rate { limit, window };
        Limits {
            connections: OpenConnections::new(config.max_connections_per_ip, config.max_connections_per_credential),
            per_connection: ConnectionRates {
                joins: rate(config.max_joins_per_window),
                heartbeats: rate(config.max_heartbeats_per_window),
                broadcasts: rate(config.max_broadcasts_per_window),
            },
            sessions_per_address: KeyedRate::new(20, Duration::from_secs(3600)),
            messages_per_session: KeyedRate::new(20, Duration::from_secs(60)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(claims: serde_json::Value) -> Identity {
        Identity { claims, expires_at: u64::MAX }
    }

    #[test]
    fn a_window_admits_its_limit_then_refuses_until_it_ends() {
        let rate = Rate { limit: 2, window: Duration::from_millis(100) };
        let start = Instant::now();
        let mut window = Window::new(start);
        assert!(window.hit(rate, start).is_ok());
        assert!(window.hit(rate, start).is_ok());
        assert_eq!(window.hit(rate, start + Duration::from_millis(30)), Err(Duration::from_millis(70)));
        assert!(window.hit(rate, start + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn connections_count_per_address_and_per_credential_until_released() {
        let open = OpenConnections::new(2, 1);
        let address: IpAddr = "203.0.113.7".parse().unwrap();
        let agent = identity(json!({"role": "authenticated", "sub": "6F9619FF-8B86-D011-B42D-00C04FC964FF"}));
        let mut first = open.admit(address).unwrap();
        open.admit_credential(&mut first, &agent).unwrap();
        // The same user, its uuid spelled in lower case, from elsewhere.
        let same_user = identity(json!({"role": "authenticated", "sub": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}));
        let mut second = open.admit("198.51.100.1".parse().unwrap()).unwrap();
        assert_eq!(open.admit_credential(&mut second, &same_user).unwrap_err().label, "connections_per_credential");
        // Tokens naming no one count against their address only.
        let anon = identity(json!({"role": "anon"}));
        let mut third = open.admit(address).unwrap();
        open.admit_credential(&mut third, &anon).unwrap();
        assert_eq!(open.admit(address).err().expect("refused").label, "connections_per_address");
        drop(first);
        assert!(open.admit(address).is_ok(), "a closed connection frees its place");
        let mut again = open.admit("198.51.100.2".parse().unwrap()).unwrap();
        assert!(open.admit_credential(&mut again, &agent).is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(address_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_connection_over_its_rate_is_told_which_limit_and_when_to_retry() {
        let window = Duration::from_secs(60);
        let one = Rate { limit: 1, window };
        let mut usage = ConnectionUsage::new(ConnectionRates { joins: one, heartbeats: one, broadcasts: one });
        assert!(usage.hit(Action::Join).is_ok());
        assert!(usage.hit(Action::Broadcast).is_ok(), "each action has its own count");
        let reason = usage.hit(Action::Join).unwrap_err();
        assert!(reason.starts_with("too many joins on this connection (limit 1 per 60000 ms); retry in "), "{reason}");
    }
}
