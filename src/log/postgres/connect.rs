//! Connection settings for the pool and for the dedicated LISTEN connection.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::DbError;

pub const POOL_APP_NAME: &str = "mcp-fanout";
pub const LISTEN_APP_NAME: &str = "mcp-fanout-listen";

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

/// The publish/read pool. Every wait is bounded by `timeout`, so database trouble becomes a fast
/// `503` instead of a hang. Statements are unnamed (`query_typed`), so PgBouncer's transaction
/// mode works.
pub fn pool(url: &str, timeout: Duration, size: usize) -> Result<Pool, DbError> {
    let cfg = pg_config(url, POOL_APP_NAME, timeout)?;
    let manager = Manager::from_config(
        cfg,
        NoTls,
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
        .map_err(|e| DbError::Pool(e.to_string()))
}
