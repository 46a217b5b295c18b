//! A PostgreSQL connection as dbward opens one: libpq's TLS modes, a server that notices a dead
//! client (`client_connection_check_interval`), the transaction-pooler probe, the history table
//! read as any session sees it, and the server's own words in errors.

use std::collections::BTreeMap;

use tokio_postgres::Client;

pub use crate::error::describe;
use crate::error::Error;
use crate::history::{self, Applied};
use crate::sql::ident;
use crate::tls;
use crate::url::PgUrl;

pub struct Postgres {
    client: Client,
    display: String,
    url: Box<PgUrl>,
}

impl Postgres {
    pub async fn connect(url: &PgUrl) -> Result<Postgres, Error> {
        let connector = tls::connector(url)?;
        let (client, connection) = url.config.connect(connector).await.map_err(|e| {
            let (what, message) = (url.display.clone(), describe(&e));
            if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) {
                Error::NoDatabase { what, message }
            } else {
                Error::Open { what, message }
            }
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres connection closed: {e}");
            }
        });
        // If dbward dies mid-batch, the server would run the orphaned statement to its end,
        // holding its locks. From PostgreSQL 14 it can check for a dead client while a query runs.
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| Error::db("reading the server version", e))?
            .get(0);
        if version >= 140000 {
            client
                .batch_execute("SET client_connection_check_interval = 1000")
                .await
                .map_err(|e| Error::db("setting client_connection_check_interval", e))?;
        }
        Ok(Postgres {
            client,
            display: url.display.clone(),
            url: Box::new(url.clone()),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The URL as shown (no password).
    pub fn display(&self) -> &str {
        &self.display
    }

    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// A session lock only protects a run whose statements all reach one server session. Behind
    /// a transaction-mode pooler (PgBouncer, Supavisor, the pooled endpoints of managed
    /// services) they do not: the lock would stay on a pooled server connection after dbward
    /// exits, and every later run would wait for a lock nobody holds. The probe: between two
    /// statements of this connection, a second connection opens a transaction (a pooler must
    /// give it a server connection to itself; most recently used first, that is the one this
    /// connection just used), and once it ends, its server connection is the most recently
    /// used one, which a pooler gives this connection's next statement (a pool that already
    /// held two server connections can pass the first two checks by chance, never the third).
    /// Directly, this connection's backend never changes and the second one never shares it.
    pub async fn refuse_pooled(&self) -> Result<(), Error> {
        let before = backend_pid(&self.client).await?;
        let other = Postgres::connect(&self.url).await?;
        other
            .client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| Error::db("checking the connection", e))?;
        let theirs = backend_pid(&other.client).await?;
        let after = backend_pid(&self.client).await?;
        other
            .client
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| Error::db("checking the connection", e))?;
        let last = backend_pid(&self.client).await?;
        if before != after || after != last || theirs == before {
            return Err(Error::Pooled {
                what: self.display.clone(),
            });
        }
        Ok(())
    }

    pub async fn has_user_tables(&self) -> Result<bool, Error> {
        Ok(self
            .client
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_%' AND c.relname NOT IN ({}))", crate::history::OWN_TABLES),
                &[],
            )
            .await
            .map_err(|e| Error::db("reading the schema", e))?
            .get(0))
    }
}

/// The server process of `c`'s session.
pub async fn backend_pid(c: &Client) -> Result<i32, Error> {
    Ok(c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(|e| Error::db("checking the connection", e))?
        .get(0))
}

/// Rows of every ordinary table (leaf partitions included, partitioned parents not, so no row
/// counts twice), by `schema.table`, as `c`'s snapshot sees them: each table is read to its end.
pub async fn row_counts(c: &Client) -> Result<BTreeMap<String, u64>, Error> {
    let tables = c
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| Error::db("listing tables", e))?;
    let mut out = BTreeMap::new();
    for t in tables {
        let (schema, table): (String, String) = (t.get(0), t.get(1));
        let n = count_rows(c, &schema, &table).await?;
        out.insert(format!("{schema}.{table}"), n);
    }
    Ok(out)
}

/// Rows of one table.
pub async fn count_rows(c: &Client, schema: &str, table: &str) -> Result<u64, Error> {
    let sql = format!(
        "SELECT count(*) FROM ONLY {}.{}",
        ident(schema),
        ident(table)
    );
    let n: i64 = c
        .query_one(&sql, &[])
        .await
        .map_err(|e| Error::db(format!("counting the rows of {schema}.{table}"), e))?
        .get(0);
    Ok(n as u64)
}

/// The history rows as `client` sees them (inside its transaction, if one is open).
pub async fn applied_on(client: &Client) -> Result<Vec<Applied>, Error> {
    let exists: bool = client
        .query_one(
            &format!("SELECT to_regclass('{}') IS NOT NULL", history::TABLE),
            &[],
        )
        .await
        .map_err(|e| Error::db("reading the migration history", e))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(history::SELECT_PG, &[])
        .await
        .map_err(|e| Error::db("reading the migration history", e))?;
    rows.iter()
        .map(|r| history::row(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}
