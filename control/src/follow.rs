//! Following the changes every replica commits, so that a change made through any
//! `serve` process sharing the database wakes the long polls held by all of them. Each
//! handler that commits a change wakes its own replica's polls at once
//! ([`AppState::committed`]); this task tells the others.
//!
//! - PostgreSQL: every change sends its version with `pg_notify` inside its transaction,
//!   so the notification is delivered when, and only if, it commits, in commit order. This
//!   task `LISTEN`s on a connection of its own and, on each, reads the version and calls
//!   [`AppState::committed`]: the payload only wakes it, so a stray `NOTIFY` on the
//!   channel (anyone with access to the database may send one) costs a read, and cannot
//!   set a version no change made, which would end every later poll's wait at once.
//!   Notifications sent while it is not listening are lost: on every (re)connect it reads
//!   the current version and calls `committed` with it before waiting. A lost connection
//!   is retried with a backoff from [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`]; it logs
//!   once when it stops listening and once when it is back. A connection that dies
//!   without a word (a firewall dropping an idle flow) may go unseen for long, so the
//!   version is also read every [`SAFETY_NET`], which bounds the lag then.
//! - SQLite: processes share the file and nothing else; this task reads the version every
//!   `store::sqlite::FOLLOW_EVERY` (one row, by primary key) and calls `committed`.
//!
//! It must never log the database URL's password: messages show the URL redacted and
//! errors scrubbed.

use crate::app::AppState;
use crate::store::{Follow, StoreError};
use sqlx::postgres::PgListener;
use std::time::Duration;

/// The first wait before reconnecting the listener.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The longest wait between two attempts to reconnect the listener.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a listening replica reads the version anyway (PostgreSQL).
pub const SAFETY_NET: Duration = Duration::from_secs(5);

/// Starts following the database's changes; runs until aborted.
pub fn spawn(s: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        match s.store.follow() {
            Follow::Poll(every) => poll(&s, every).await,
            Follow::Notify { pool, channel } => {
                tokio::join!(listen(&s, &pool, channel), poll(&s, SAFETY_NET));
            }
        }
    })
}

/// `e` as it may be logged: without the URL's password.
fn shown(s: &AppState, e: &dyn std::fmt::Display) -> String {
    crate::store::scrub(e.to_string(), s.config.database_url.expose())
}

async fn poll(s: &AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match s.store.version().await {
            Ok(version) => {
                if failing {
                    tracing::info!("reading the feed version again");
                    failing = false;
                }
                s.committed(version);
            }
            Err(e) if !failing => {
                tracing::warn!(error = %shown(s, &e), "cannot read the feed version: \
                    other replicas' changes reach held polls at the end of their wait");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn listen(s: &AppState, pool: &sqlx::PgPool, channel: &'static str) {
    let database = s.config.database_url.to_string();
    let mut backoff = BACKOFF_MIN;
    // Whether the last attempt failed, so an outage is logged once.
    let mut down = false;
    loop {
        match connect(s, pool, channel).await {
            Ok(mut listener) => {
                if down {
                    tracing::info!(%database, channel, "listening for changes again");
                } else {
                    tracing::info!(%database, channel, "listening for changes");
                }
                backoff = BACKOFF_MIN;
                let lost = receive(s, &mut listener).await;
                tracing::warn!(%database, error = %shown(s, &lost),
                    "stopped listening for changes; reconnecting: until then, other \
                     replicas' changes reach held polls within the periodic read");
                down = true;
            }
            Err(e) => {
                if !down {
                    tracing::warn!(%database, error = %shown(s, &e),
                        "cannot listen for changes; retrying: until then, other replicas' \
                         changes reach held polls within the periodic read");
                }
                down = true;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A listener on `channel`, once the version committed while none was has been passed on.
async fn connect(
    s: &AppState,
    pool: &sqlx::PgPool,
    channel: &str,
) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection returns at once, so this module reconnects and reads the version.
    listener.eager_reconnect(false);
    listener.listen(channel).await?;
    // Listening first, then reading: a change committed in between is seen either way.
    s.committed(s.store.version().await?);
    Ok(listener)
}

/// Reads the version on every notification until the connection is lost; returns why.
async fn receive(s: &AppState, listener: &mut PgListener) -> StoreError {
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => match s.store.version().await {
                Ok(version) => s.committed(version),
                Err(e) => return e,
            },
            Ok(None) => return StoreError::Database("the connection was lost".to_string()),
            Err(e) => return e.into(),
        }
    }
}
