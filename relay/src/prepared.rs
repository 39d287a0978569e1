//! A shard's query connection with its statements prepared once. A query sent as text costs a
//! round trip more (tokio-postgres prepares an unnamed statement before running it) and is
//! parsed, analysed and planned by the server at every call: for every join's
//! `authorize_channel`, every API call and every peer message over PostgreSQL.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row, Statement};

pub struct QueryClient {
    client: Client,
    /// By SQL text: the relay runs a fixed set of statements.
    statements: Mutex<HashMap<String, Statement>>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs `$call` with `$sql`'s statement, prepared on first use. A statement whose result type
/// changed under it (a function replaced by an upgrade of the extension) is prepared again and
/// run once more.
macro_rules! prepared {
    ($self:ident, $sql:ident, |$statement:ident| $call:expr) => {{
        let $statement = $self.statement($sql).await?;
        match $call.await {
            Err(err) if plan_changed(&err) => {
                $self.cache().remove($sql);
                let $statement = $self.statement($sql).await?;
                $call.await
            }
            result => result,
        }
    }};
}

impl QueryClient {
    pub fn new(client: Client) -> QueryClient {
        QueryClient { client, statements: Mutex::default() }
    }

    /// The connection itself, for what needs no statement (the liveness probe).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        prepared!(self, sql, |statement| self.client.query(&statement, params))
    }

    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        prepared!(self, sql, |statement| self.client.query_one(&statement, params))
    }

    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        prepared!(self, sql, |statement| self.client.execute(&statement, params))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Statement>> {
        self.statements.lock().expect("the statement cache is never poisoned")
    }

    async fn statement(&self, sql: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.cache().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.cache().insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// PostgreSQL's answer to a prepared statement whose result columns changed since it was prepared.
fn plan_changed(err: &Error) -> bool {
    err.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::FEATURE_NOT_SUPPORTED
            && db.message().contains("cached plan must not change result type")
    })
}
