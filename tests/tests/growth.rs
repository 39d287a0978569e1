//! Every path the API and the relay run stays index-backed as data grows: with 20,000
//! conversations, 2,000 widget sessions, 100,000 messages and 200,000 events loaded, no statement
//! that any principal's call runs (inside functions, policies and triggers included) reads a table
//! that grows with usage by a sequential scan, or walks an index past thousands of rows it then
//! throws away. Plan shape and row counts, not time: every statement's plan, with its actual row
//! counts, comes from auto_explain (nested statements, JSON) as a notice to the caller.

use campfire_tests::postgres::{Client, Config, NoTls};
use campfire_tests::{TestDb, agent, service, visitor};
use serde_json::Value;
use std::sync::{Arc, Mutex};

const GROWING: &[&str] = &[
    "conversations",
    "realtime_conversations",
    "messages",
    "widget_sessions",
    "conversation_reads",
    "events",
    "organization_members",
];

/// Rows a node over a growing table may read and discard: a call touches one organization's or
/// one conversation's rows (at most a few hundred here), never a share of the whole table.
const DISCARDED_ROWS_LIMIT: f64 = 2000.0;

/// A connection that receives the plan of every statement it runs, nested ones included.
struct Explained {
    client: Client,
    plans: Arc<Mutex<Vec<Value>>>,
}

impl Explained {
    fn connect(db: &TestDb, role: &str, claims: &Value) -> Explained {
        let plans = Arc::new(Mutex::new(Vec::new()));
        let sink = plans.clone();
        let mut config: Config = db.connection_string().parse().unwrap();
        config.notice_callback(move |notice| {
            let text = notice.message();
            if let Some(start) = text.find('{')
                && let Ok(plan) = serde_json::from_str(&text[start..])
            {
                sink.lock().unwrap().push(plan);
            }
        });
        let mut client = config.connect(NoTls).unwrap();
        client
            .batch_execute(
                "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; \
                 SET auto_explain.log_nested_statements = on; SET auto_explain.log_format = json; \
                 SET auto_explain.log_analyze = on; SET auto_explain.log_timing = off; \
                 SET auto_explain.log_level = notice",
            )
            .unwrap();
        client.execute("SELECT set_config('request.jwt.claims', $1, false)", &[&claims.to_string()]).unwrap();
        client.batch_execute(&format!("SET ROLE {role}")).unwrap();
        Explained { client, plans }
    }

    /// Runs `sql` (refusals are fine: the path up to them is what is checked) and returns the
    /// scans of growing tables that are not index-backed, in the plans of everything it ran.
    fn unbounded_scans(&mut self, sql: &str) -> Vec<String> {
        self.plans.lock().unwrap().clear();
        let outcome = self.client.batch_execute(sql);
        let plans = std::mem::take(&mut *self.plans.lock().unwrap());
        let mut found = Vec::new();
        for plan in &plans {
            let query = plan["Query Text"].as_str().unwrap_or_default();
            collect_unbounded_scans(&plan["Plan"], &mut |scan| {
                found.push(format!("{scan} in: {}", query.split_whitespace().collect::<Vec<_>>().join(" ")))
            });
        }
        assert!(!plans.is_empty(), "auto_explain reported no plan for {sql}: {outcome:?}");
        found
    }
}

fn collect_unbounded_scans(node: &Value, found: &mut impl FnMut(String)) {
    if let Some(table) = node["Relation Name"].as_str()
        && GROWING.contains(&table)
    {
        let discarded = ["Rows Removed by Filter", "Rows Removed by Index Recheck"]
            .iter()
            .filter_map(|key| node[key].as_f64())
            .sum::<f64>()
            * node["Actual Loops"].as_f64().unwrap_or(1.0);
        if node["Node Type"] == "Seq Scan" {
            found(format!("sequential scan of {table}"));
        } else if discarded > DISCARDED_ROWS_LIMIT {
            found(format!("{} of {table} discarding {discarded} rows", node["Node Type"]));
        }
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        collect_unbounded_scans(child, found);
    }
}

#[test]
fn no_path_reads_a_growing_table_by_sequential_scan() {
    let db = TestDb::new();
    let mut admin = db.connect();
    admin.batch_execute(include_str!("../fixtures/growth.sql")).unwrap();
    admin.batch_execute("SELECT pg_temp.campfire_grow(1000, 20000, 5)").unwrap();
    admin.batch_execute("VACUUM ANALYZE").unwrap();
    // Visitor 5 of organization 6: conversations 50-59, the last one open.
    let ids = admin
        .query_one(
            "SELECT pg_temp.grow_id('org', 6), pg_temp.grow_id('session', 5), pg_temp.grow_id('session', 6), \
                    pg_temp.grow_id('conv', 59), pg_temp.grow_id('agent', 6), pg_temp.grow_id('admin', 6)",
            &[],
        )
        .unwrap();
    let [org, session, other_session, conversation, agent_id, admin_id]: [uuid::Uuid; 6] =
        std::array::from_fn(|i| ids.get(i));
    let secret: String = admin
        .query_one(
            "SELECT campfire.widget_secret(campfire.server_key(), s.id, s.secret_nonce) \
             FROM campfire.widget_sessions s WHERE s.id = $1",
            &[&session],
        )
        .unwrap()
        .get(0);
    let (conv_topic, org_topic) = (format!("org:{org}:conv:{conversation}"), format!("org:{org}"));
    let middle_of_list = "(SELECT r.updated_at, r.id FROM campfire.realtime_conversations r \
                          WHERE r.organization_id = '{org}' ORDER BY r.updated_at DESC, r.id DESC OFFSET 15 LIMIT 1) page";

    let calls: Vec<(&str, Value, Vec<String>)> = vec![
        (
            "campfire_client",
            visitor(session),
            vec![
                format!("SELECT campfire.start_widget_session('{org}', 'grow-visitor-5')"),
                format!("SELECT campfire.start_widget_session('{org}', 'grow-visitor-5', resume_secret => '{secret}')"),
                format!("SELECT campfire.start_widget_session('{org}', 'a-new-visitor')"),
                format!("SELECT campfire.send_message('{conversation}', 'hello')"),
                format!("SELECT campfire.send_message('{conversation}', 'hello', client_message_id => 'c-1')"),
                format!("SELECT * FROM campfire.history('{conversation}')"),
                format!("SELECT campfire.mark_read('{conversation}')"),
                "SELECT * FROM campfire.events_since(0)".into(),
                format!("SELECT * FROM campfire.events_since(0, '{conv_topic}')"),
                "SELECT * FROM campfire.widget_conversations".into(),
                format!("SELECT campfire.revoke_widget_session('{session}')"),
            ],
        ),
        (
            "campfire_client",
            agent(agent_id),
            vec![
                format!("SELECT campfire.send_message('{conversation}', 'reply')"),
                format!("SELECT campfire.send_message('{conversation}', 'aside', message_type => 'note')"),
                format!("SELECT * FROM campfire.list_conversations('{org}')"),
                format!(
                    "SELECT * FROM campfire.list_conversations('{org}', after_updated_at => (SELECT updated_at FROM {m}), \
                     after_id => (SELECT id FROM {m}))",
                    m = middle_of_list.replace("{org}", &org.to_string())
                ),
                format!("SELECT * FROM campfire.list_conversations('{org}', 'mine')"),
                format!("SELECT * FROM campfire.list_conversations('{org}', 'unassigned')"),
                format!("SELECT * FROM campfire.list_conversations('{org}', 'open')"),
                format!("SELECT campfire.mark_read('{conversation}')"),
                format!("SELECT * FROM campfire.history('{conversation}')"),
                "SELECT * FROM campfire.events_since(0)".into(),
                format!("SELECT * FROM campfire.events_since(0, '{org_topic}')"),
                format!("SELECT campfire.assign_conversation('{conversation}', '{agent_id}')"),
                format!("SELECT campfire.set_conversation_status('{conversation}', 'pending')"),
                format!("SELECT campfire.claim_conversation('{conversation}')"),
                format!("SELECT campfire.set_availability('{org}', 'online')"),
                format!("SELECT * FROM campfire.messages WHERE conversation_id = '{conversation}'"),
            ],
        ),
        (
            "campfire_client",
            agent(admin_id),
            vec![
                format!("SELECT campfire.erase_visitor('{org}', 'grow-visitor-1005')"),
                format!("SELECT campfire.add_member('{org}', gen_random_uuid(), 'agent')"),
            ],
        ),
        ("campfire_service", service(), vec!["SELECT campfire.prune_events(interval '20 days')".into()]),
        (
            "campfire_relay",
            serde_json::json!({}),
            vec![
                format!("SELECT campfire.authorize_channel('{conv_topic}', '{}')", visitor(other_session)),
                format!("SELECT campfire.authorize_channel('{conv_topic}', '{}')", agent(agent_id)),
                format!("SELECT campfire.authorize_channel('{org_topic}', '{}')", agent(agent_id)),
                format!("SELECT * FROM campfire.read_log(0, 1000, '{conv_topic}')"),
                "SELECT * FROM campfire.read_log(10000, 1000)".into(),
                "SELECT campfire.log_head(), campfire.log_tail()".into(),
                format!("SELECT campfire.visitor_claims('{secret}')"),
            ],
        ),
    ];

    let mut scans = std::collections::BTreeSet::new();
    for (role, claims, statements) in calls {
        let mut session = Explained::connect(&db, role, &claims);
        for sql in statements {
            for scan in session.unbounded_scans(&sql) {
                scans.insert(format!("{sql}\n    -> {scan}"));
            }
        }
    }
    let report: Vec<_> = scans.into_iter().collect();
    assert!(report.is_empty(), "scans of growing tables that grow with them:\n{}", report.join("\n"));
}
