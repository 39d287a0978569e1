//! The relay's query connection keeps its statements prepared: when a function it calls is
//! replaced with another result type under a prepared statement (as an upgrade of the extension
//! may do), the next call prepares the statement again and answers, where the cached statement
//! alone would fail with "cached plan must not change result type".

use campfire_relay::prepared::QueryClient;
use campfire_testkit::Database;
use campfire_testkit::ws::WAIT;
use tokio_postgres::NoTls;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio::time::timeout(WAIT, tokio_postgres::connect(url, NoTls)).await.expect("connecting timed out").unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_statement_whose_result_type_changed_is_prepared_again() {
    let database = tokio::task::spawn_blocking(|| Database::new("campfire_relay_prepared")).await.unwrap();
    let admin = connect(&database.url("postgres")).await;
    admin
        .batch_execute("CREATE FUNCTION public.answer() RETURNS TABLE (n int) LANGUAGE sql AS 'SELECT 42'")
        .await
        .unwrap();
    let queries = QueryClient::new(connect(&database.url("postgres")).await);
    const SQL: &str = "SELECT * FROM public.answer()";

    let first = queries.query_one(SQL, &[]).await.unwrap();
    assert_eq!(first.get::<_, i32>(0), 42);

    // Another statement prepared now, for the control: once the function changes, the server
    // refuses to run it.
    let control = queries.client().prepare(SQL).await.unwrap();
    admin
        .batch_execute(
            "DROP FUNCTION public.answer();
             CREATE FUNCTION public.answer() RETURNS TABLE (n int, word text) LANGUAGE sql AS $$SELECT 43, 'replaced'$$",
        )
        .await
        .unwrap();
    let refused = queries.client().query_one(&control, &[]).await.unwrap_err();
    let message = refused.as_db_error().map(|e| e.message().to_owned()).unwrap_or_else(|| refused.to_string());
    assert!(message.contains("cached plan must not change result type"), "{message}");

    let again = queries.query_one(SQL, &[]).await.unwrap();
    assert_eq!((again.get::<_, i32>(0), again.get::<_, &str>(1)), (43, "replaced"));
    assert_eq!(queries.query(SQL, &[]).await.unwrap().len(), 1, "the statement prepared again is cached");
}
