//! The shards scenario: one relay following 1, 2 and 3 PostgreSQL clusters, an organization placed
//! on each, with writers on every shard at once: messages committed and delivered per second in
//! all, and the relay's CPU per message. On one machine the clusters share its cores, so this
//! measures what following M logs costs one relay and whether it keeps up, not what M machines
//! would write.

use crate::{Args, Cluster, Org, Path, Relay, connect, cpu_seconds, create_org, free_port, median_at};
use crate::{relay_command, start_cluster, start_listening, write_rate};
use anyhow::Result;
use serde_json::{Value, json};

const MAX_SHARDS: usize = 3;
/// Writers per shard: the load each shard adds is the same.
const WRITERS_PER_SHARD: usize = 4;

/// A relay whose default shard is the first of `shards`, the others placed by a file in `dir`.
async fn start_sharded_relay(args: &Args, shards: &[(&Cluster, &Org)], dir: &std::path::Path) -> Result<Relay> {
    let port = free_port();
    let mut command = relay_command(args, shards[0].0, port);
    let mut specs = Vec::new();
    let mut placement = String::new();
    for (i, (cluster, org)) in shards.iter().enumerate().skip(1) {
        specs.push(format!("s{i}=host=127.0.0.1 port={} user=campfire_relay_bench dbname=campfire", cluster.port));
        placement.push_str(&format!("s{i} = [\"{}\"]\n", org.id));
    }
    // One shard is a relay as everyone runs it: no flags at all.
    if !specs.is_empty() {
        let file = dir.join(format!("placement-{}.toml", shards.len()));
        std::fs::write(&file, placement)?;
        command.env("CAMPFIRE_SHARDS", specs.join(",")).env("CAMPFIRE_PLACEMENT", &file);
    }
    start_listening(command, port).await
}

/// Every shard written to at once for `seconds`, each by its writers, each delivered to one
/// subscriber of its organization's conversation list.
async fn run(relay: &Relay, shards: &[(&Cluster, &Org)], seconds: u64) -> Result<Value> {
    let cpu_before = cpu_seconds(relay.child.id());
    let writes = shards
        .iter()
        .map(|(cluster, org)| write_rate(cluster, Path::Campfire, Some(relay), org, WRITERS_PER_SHARD, 1, seconds));
    let per_shard: Vec<Value> = futures_util::future::try_join_all(writes).await?;
    let cpu = cpu_seconds(relay.child.id()) - cpu_before;
    let sum = |key: &str| per_shard.iter().map(|r| r[key].as_f64().unwrap_or(0.0)).sum::<f64>();
    Ok(json!({
        "shards": shards.len(), "committed": sum("committed"), "delivered": sum("delivered"), "lost": sum("lost"),
        "per_second": sum("per_second"),
        "relay_cpu_us_per_message": cpu * 1e6 / sum("delivered"),
        "per_shard": per_shard,
    }))
}

/// 1, 2 and 3 shards in turn: medians over `args.runs`. `cluster` and `org` are the first shard.
pub async fn shards(args: &Args, cluster: &Cluster, org: &Org) -> Result<Value> {
    let mut others = Vec::new();
    for i in 1..MAX_SHARDS {
        let cluster = start_cluster(args.wal_flush_delay_us)?;
        let org = create_org(&connect(cluster.port, "postgres").await?, &format!("shard-{i}"), 100).await?;
        others.push((cluster, org));
    }
    let all: Vec<(&Cluster, &Org)> =
        std::iter::once((cluster, org)).chain(others.iter().map(|(c, o)| (c, o))).collect();
    let dir = std::env::temp_dir().join(format!("campfire-bench-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut results = Vec::new();
    for count in 1..=MAX_SHARDS {
        let shards = &all[..count];
        let relay = start_sharded_relay(args, shards, &dir).await?;
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            runs.push(run(&relay, shards, args.seconds).await?);
        }
        let rate = median_at(&runs, "/per_second");
        let cpu = median_at(&runs, "/relay_cpu_us_per_message");
        let lost: f64 = runs.iter().map(|r| r["lost"].as_f64().unwrap_or(0.0)).sum();
        println!(
            "shards: 1 relay following {count} ({} writers each): {rate:.0} messages/s committed and delivered, \
             {lost} lost, relay CPU {cpu:.0} us per message",
            WRITERS_PER_SHARD
        );
        results.push(json!({
            "shards": count, "writers_per_shard": WRITERS_PER_SHARD,
            "median": { "per_second": rate, "relay_cpu_us_per_message": cpu }, "lost": lost, "runs": runs,
        }));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!(results))
}
