//! Connection settings for the pool and for the dedicated LISTEN connection.

use std::path::Path;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::DbError;
use crate::tls::TrustedCas;

/// The TLS connector for every Postgres connection. The URL's `sslmode` decides whether TLS is
/// used (`disable`, `prefer` — the default —, `require`); whenever it is, the server certificate
/// is verified (chain and host name) against the Mozilla roots plus `ca_file` (PEM,
/// `FANOUT_DB_CA_FILE`; [`crate::tls`]), so a private CA works and nothing is trusted silently.
pub fn tls(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, DbError> {
    let config = TrustedCas::load(ca_file)?.client_config()?;
    Ok(MakeRustlsConnect::new(config))
}

pub const POOL_APP_NAME: &str = "mcp-fanout";
pub const LISTEN_APP_NAME: &str = "mcp-fanout-listen";
/// The group-commit writer's own connection (publishes never wait behind the pool's readers).
pub const WRITER_APP_NAME: &str = "mcp-fanout-writer";

/// A Postgres config from a URL, with our application name, connect timeout and TCP keepalives
/// (so a dead peer is noticed within seconds, not hours).
pub fn pg_config(
    url: &str,
    app_name: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Config, DbError> {
    let mut cfg: tokio_postgres::Config = url.parse().map_err(DbError::Url)?;
    if cfg.get_application_name().is_none() {
        cfg.application_name(app_name);
    }
    cfg.connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    Ok(cfg)
}

/// A pool of `size` connections named `app` (`application_name`): the read pool, or the writer's
/// own. Every wait is bounded by `timeout`, so database trouble becomes a fast `503` instead of a
/// hang. Statements are unnamed (`query_typed`), so PgBouncer's transaction mode works.
pub fn pool(
    url: &str,
    app: &str,
    timeout: Duration,
    size: usize,
    tls: MakeRustlsConnect,
) -> Result<Pool, DbError> {
    let cfg = pg_config(url, app, timeout)?;
    let manager = Manager::from_config(
        cfg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(DbError::Pool)
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::tls::TlsError;

    #[test]
    fn an_unreadable_ca_file_is_named_and_its_cause_kept() {
        let path = Path::new("/nonexistent/mcp-fanout-ca.pem");
        let Err(error) = tls(Some(path)) else {
            panic!("a missing CA file must fail");
        };
        assert!(
            error
                .to_string()
                .starts_with("TLS setup: cannot read /nonexistent/mcp-fanout-ca.pem: "),
            "{error}"
        );
        let source = error.source().expect("the TLS error");
        assert!(matches!(
            source.downcast_ref::<TlsError>(),
            Some(TlsError::ReadCaFile { .. })
        ));
        assert!(source.source().is_some(), "the I/O error is kept");
    }
}
