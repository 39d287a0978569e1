//! Shards: the PostgreSQL databases a relay follows, and which organization lives on which.
//!
//! `--database-url` is the shard named `default`, home of every organization not placed
//! elsewhere; `--shard NAME=URL` adds one, and the placement file puts organizations on it. An
//! organization lives on one shard, and every channel name carries its organization, so a join,
//! a resume and an HTTP call each go to exactly one shard, and a shard's event ids are only ever
//! compared with that shard's.

use crate::db::{Db, DbError};
use crate::metrics::Metrics;
use crate::{Config, Health};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// The name of `--database-url`'s shard.
pub const DEFAULT_SHARD: &str = "default";

/// `--shard NAME=URL`: a database and the name the placement file and metrics know it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    pub name: String,
    pub url: String,
}

impl ShardSpec {
    /// `NAME=URL`, the URL a libpq connection string (`postgres://…` or `host=… dbname=…`).
    pub fn parse(text: &str) -> Result<ShardSpec, String> {
        let (name, url) = text.split_once('=').ok_or("expected NAME=URL")?;
        let name_chars = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if name.is_empty() || !name.chars().all(name_chars) {
            return Err(format!("shard name {name:?}: use letters, digits, '-' and '_'"));
        }
        if name == DEFAULT_SHARD {
            return Err(format!("the shard name {DEFAULT_SHARD:?} is --database-url's"));
        }
        url.parse::<tokio_postgres::Config>().map_err(|err| format!("shard {name}: bad connection string: {err}"))?;
        Ok(ShardSpec { name: name.to_owned(), url: url.to_owned() })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("shard {0:?} is configured twice")]
    DuplicateShard(String),
    #[error("the placement puts organizations on shard {0:?}, which no --shard names (nor is it {DEFAULT_SHARD:?})")]
    UnknownShard(String),
    #[error("the placement names organization {0:?}, which is not a UUID")]
    NotAnOrganization(String),
    #[error("organization {org} is placed twice (on {first:?} and on {second:?})")]
    PlacedTwice { org: Uuid, first: String, second: String },
    #[error("the placement is no table of shard names to lists of organization ids: {0}")]
    Syntax(String),
    #[error("reading the placement file {path}: {reason}")]
    File { path: String, reason: String },
}

/// Which shard holds which organization: an index into the shard list, 0 the default.
#[derive(Debug, Default)]
pub struct Placement {
    homes: HashMap<Uuid, usize>,
}

impl Placement {
    /// A placement file's text: one key per shard, its organizations' ids in an array,
    /// `eu = ["8f0c…", …]`. `names` are the shards' names, the default first.
    pub fn parse(names: &[&str], text: &str) -> Result<Placement, PlacementError> {
        let table: HashMap<String, Vec<String>> =
            toml::from_str(text).map_err(|err| PlacementError::Syntax(err.to_string()))?;
        // Sorted, so that which of two places an organization is said to have first is stable.
        let mut shards: Vec<(String, Vec<String>)> = table.into_iter().collect();
        shards.sort();
        let mut homes = HashMap::new();
        for (shard, orgs) in shards {
            let index =
                names.iter().position(|n| *n == shard).ok_or_else(|| PlacementError::UnknownShard(shard.clone()))?;
            for org in orgs {
                let id = Uuid::try_parse(&org).map_err(|_| PlacementError::NotAnOrganization(org.clone()))?;
                if let Some(first) = homes.insert(id, index) {
                    let first = names[first].to_owned();
                    return Err(PlacementError::PlacedTwice { org: id, first, second: shard });
                }
            }
        }
        Ok(Placement { homes })
    }

    /// The placement file at `path`.
    pub fn load(names: &[&str], path: &std::path::Path) -> Result<Placement, PlacementError> {
        let file_error = |reason: String| PlacementError::File { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|err| file_error(err.to_string()))?;
        Placement::parse(names, &text).map_err(|err| match err {
            PlacementError::Syntax(reason) => file_error(reason),
            other => other,
        })
    }

    /// The index of the shard holding `org`.
    pub fn shard_of(&self, org: Uuid) -> usize {
        self.homes.get(&org).copied().unwrap_or(0)
    }
}

/// The organization a channel name carries, if it is one.
pub fn organization_of(topic: &str) -> Option<Uuid> {
    campfire_core::channel::parse(topic).ok().map(|channel| channel.organization())
}

/// One database the relay follows: its connections, and its LISTEN state and cursor.
pub struct Shard {
    pub name: String,
    pub db: Db,
    pub health: Health,
}

/// Every shard, the default first, and the placement that routes to them.
pub struct Shards {
    list: Vec<Shard>,
    placement: Placement,
}

impl Shards {
    /// The shards `config` names, checked: distinct names, connection strings that parse, a
    /// placement file that names only those shards and each organization once.
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Shards> {
        let default = ShardSpec { name: DEFAULT_SHARD.to_owned(), url: config.database_url.clone() };
        let specs: Vec<&ShardSpec> = std::iter::once(&default).chain(&config.shards).collect();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        if let Some(twice) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
            return Err(PlacementError::DuplicateShard(twice.1.to_string()).into());
        }
        let placement = match &config.placement {
            None => Placement::default(),
            Some(path) => Placement::load(&names, path)?,
        };
        let list = specs
            .iter()
            .map(|spec| {
                let db = Db::new(&spec.name, &spec.url, config, metrics.clone())
                    .map_err(|err| anyhow::anyhow!("shard {}: bad connection string: {err}", spec.name))?;
                Ok(Shard { name: spec.name.clone(), db, health: Health::default() })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Shards { list, placement })
    }

    pub fn all(&self) -> &[Shard] {
        &self.list
    }

    /// `--database-url`'s shard: peer messages over PostgreSQL go through it, and its notify key
    /// seals them on any bus (every relay must agree on one).
    pub fn default_shard(&self) -> &Shard {
        &self.list[0]
    }

    pub fn of_organization(&self, org: Uuid) -> &Shard {
        &self.list[self.placement.shard_of(org)]
    }

    /// The shard of a channel name's organization; a name that is no channel goes to the default
    /// shard, whose extension says what is wrong with it.
    pub fn of_topic(&self, topic: &str) -> &Shard {
        match organization_of(topic) {
            Some(org) => self.of_organization(org),
            None => self.default_shard(),
        }
    }

    /// Whether an event of `topic` read from `shard`'s log belongs there. One of an organization
    /// placed elsewhere (rows left behind by a move, a placement not yet reloaded) is not
    /// routed: its id counts in another log than the one its subscribers' cursors follow.
    pub fn holds(&self, shard: &Shard, topic: &str) -> bool {
        self.list.len() == 1 || std::ptr::eq(self.of_topic(topic), shard)
    }

    /// The claims of a widget session secret, from the shard of `org` when the caller names
    /// one, else from whichever shard knows it (a secret names its session, not its
    /// organization). A secret no reachable shard knows is unavailable, not refused, while a
    /// shard that might know it is down.
    pub async fn visitor_claims(&self, secret: &str, org: Option<Uuid>) -> Result<Value, DbError> {
        if let Some(org) = org {
            return self.of_organization(org).db.visitor_claims(secret).await;
        }
        let answers =
            futures_util::future::join_all(self.list.iter().map(|shard| shard.db.visitor_claims(secret))).await;
        let mut refusal = None;
        let mut unavailable = None;
        for answer in answers {
            match answer {
                Ok(claims) => return Ok(claims),
                Err(err @ (DbError::Unavailable(_) | DbError::TimedOut(_))) => unavailable = Some(err),
                Err(err) => refusal = Some(err),
            }
        }
        Err(unavailable.or(refusal).expect("at least the default shard answered"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 3] = [DEFAULT_SHARD, "eu", "us"];
    const ORG: &str = "0b7e5a8c-3d34-4a5e-9a43-1f6d2b8c9e01";
    const OTHER: &str = "6a1f8c22-7d9e-4b0a-8e55-2c3d4e5f6a7b";

    #[test]
    fn a_shard_is_a_name_and_a_connection_string() {
        let spec = ShardSpec::parse("eu=host=db-eu port=5432 dbname=campfire").unwrap();
        assert_eq!((spec.name.as_str(), spec.url.as_str()), ("eu", "host=db-eu port=5432 dbname=campfire"));
        assert_eq!(ShardSpec::parse("us=postgres://relay@db-us/campfire").unwrap().name, "us");
        for (bad, says) in [
            ("postgres://db", "NAME=URL"),
            ("=host=db", "shard name"),
            ("e u=host=db", "shard name"),
            ("default=host=db", "--database-url"),
            ("eu=postgres://db:notaport/x", "bad connection string"),
        ] {
            let err = ShardSpec::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn organizations_not_placed_live_on_the_default_shard() {
        let placement = Placement::parse(&NAMES, &format!("us = [\"{ORG}\"]\neu = []")).unwrap();
        assert_eq!(placement.shard_of(ORG.parse().unwrap()), 2);
        assert_eq!(placement.shard_of(OTHER.parse().unwrap()), 0);
        let explicit = Placement::parse(&NAMES, &format!("default = [\"{ORG}\"]")).unwrap();
        assert_eq!(explicit.shard_of(ORG.parse().unwrap()), 0);
    }

    #[test]
    fn a_placement_names_known_shards_and_each_organization_once() {
        let parse = |text: String| Placement::parse(&NAMES, &text).unwrap_err();
        assert_eq!(parse(format!("asia = [\"{ORG}\"]")), PlacementError::UnknownShard("asia".into()));
        assert_eq!(parse("eu = [\"acme\"]".into()), PlacementError::NotAnOrganization("acme".into()));
        let twice = parse(format!("eu = [\"{ORG}\"]\nus = [\"{OTHER}\", \"{}\"]", ORG.to_uppercase()));
        assert_eq!(
            twice,
            PlacementError::PlacedTwice { org: ORG.parse().unwrap(), first: "eu".into(), second: "us".into() }
        );
        assert!(matches!(parse("eu = \"not a list\"".into()), PlacementError::Syntax(_)));
    }
}
