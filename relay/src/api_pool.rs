//! The API's connections to a shard: a few, each running one call at a time. The API's calls
//! write (a message, a read receipt, an assignment) and may wait on a row lock an application's
//! transaction holds; on the shard's shared, pipelined query connection such a call would hold
//! up every call and join queued behind it. Here it holds only its own connection, for at most
//! the lock timeout, and the relay's own statements (joins, log reads) never wait for the API.

use crate::db::DbError;
use crate::prepared::QueryClient;
use deadpool::Runtime;
use deadpool::managed::{Manager, Metrics, Object, Pool, PoolError, RecycleError, RecycleResult};
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use tokio_util::task::AbortOnDropHandle;

/// One API connection and the task driving it (dropping it ends the connection).
pub struct ApiConnection {
    pub client: QueryClient,
    _driver: AbortOnDropHandle<()>,
}

/// Opens API connections with the shard's settings (keepalives, TCP user timeout) and a lock
/// timeout: a call waiting longer for a row lock fails with SQLSTATE 55P03.
pub struct ApiConnections {
    config: tokio_postgres::Config,
    timeout: Duration,
}

impl Manager for ApiConnections {
    type Type = ApiConnection;
    type Error = DbError;

    async fn create(&self) -> Result<ApiConnection, DbError> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let driver = AbortOnDropHandle::new(tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(%err, "API connection ended");
            }
        }));
        client.batch_execute(&format!("SET lock_timeout = {}", self.timeout.as_millis())).await?;
        Ok(ApiConnection { client: QueryClient::new(client), _driver: driver })
    }

    async fn recycle(&self, connection: &mut ApiConnection, _: &Metrics) -> RecycleResult<DbError> {
        if connection.client.client().is_closed() {
            return Err(RecycleError::message("the connection ended"));
        }
        Ok(())
    }
}

pub type ApiPool = Pool<ApiConnections>;

/// At most `size` connections; taking one, or opening it, waits at most `timeout`.
pub fn api_pool(config: tokio_postgres::Config, size: usize, timeout: Duration) -> ApiPool {
    Pool::builder(ApiConnections { config, timeout })
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .expect("a pool with timeouts and a runtime builds")
}

/// Runs one API call's statement on a connection of the pool: the outer error when no
/// connection answered, the inner one the statement's own. A connection that gives no answer
/// within the lock timeout and the database timeout more is dropped from the pool, not handed to
/// the next call: its link went silent while something (a proxy, a NAT box that lost its entry)
/// still acknowledges, so the kernel never ends it.
pub async fn query_one(
    pool: &ApiPool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Result<Row, tokio_postgres::Error>, DbError> {
    let connection = take(pool).await?;
    let deadline = 2 * pool.manager().timeout;
    match tokio::time::timeout(deadline, connection.client.query_one(sql, params)).await {
        Ok(answer) => Ok(answer),
        Err(_) => {
            drop(Object::take(connection));
            Err(DbError::TimedOut(deadline))
        }
    }
}

/// A connection for one API call.
async fn take(pool: &ApiPool) -> Result<Object<ApiConnections>, DbError> {
    pool.get().await.map_err(|err| match err {
        PoolError::Backend(err) => err,
        PoolError::Timeout(_) => DbError::Unavailable(format!(
            "every API connection ({}) stayed busy for {:?}",
            pool.status().max_size,
            pool.timeouts().wait.unwrap_or_default()
        )),
        other => DbError::Unavailable(other.to_string()),
    })
}
