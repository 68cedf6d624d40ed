//! `gatehouse-control serve`: opens the database (SQLite or PostgreSQL, by the URL's
//! scheme), starts the cleanup job and the follower of other replicas' changes
//! (`follow.rs`), and serves the router until SIGINT or SIGTERM. Then it stops taking
//! connections, answers its held long polls at once (as at the end of their `wait`), and
//! exits once the requests in flight are answered, or after [`STOP_DEADLINE`] whatever
//! is still open.
//! A database that cannot be opened stops start-up with a message naming it; the URL is
//! only ever shown with its password hidden.

use crate::app::{AppState, router};
use crate::clock::SystemClock;
use crate::config::Config;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The longest a stopping process waits for requests in flight (an import's stream, say);
/// held long polls are answered at once and do not count.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// JSON log lines on stderr; `RUST_LOG` filters them (defaults to `info`).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

pub async fn run(config: Config) -> Result<(), String> {
    init_logs();
    // `database_url` displays with its password hidden; store errors never hold it.
    let store = crate::store::open(config.database_url.expose())
        .await
        .map_err(|e| format!("opening the database {}: {e}", config.database_url))?;
    let listen = config.listen;
    let state = AppState::new(store, config, Arc::new(SystemClock))
        .await
        .map_err(|e| format!("reading the database: {e}"))?;
    let cleanup = crate::cleanup::spawn(state.clone());
    let follow = crate::follow::spawn(state.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(listen = %bound, "gatehouse-control serving");
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stopping = state.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("stopping: answering held polls");
            stopping.stop();
        })
        .into_future();
    tokio::pin!(served);
    let mut stop = state.stopping.subscribe();
    let served = tokio::select! {
        served = &mut served => served,
        () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            match tokio::time::timeout(STOP_DEADLINE, &mut served).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!(deadline_secs = STOP_DEADLINE.as_secs(),
                        "requests still open at the stop deadline: dropped");
                    Ok(())
                }
            }
        }
    }
    .map_err(|e| format!("serving: {e}"));
    cleanup.abort();
    follow.abort();
    tracing::info!("gatehouse-control stopped");
    served
}
