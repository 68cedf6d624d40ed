//! gatehouse-control: the control service. It issues, rotates and revokes API keys,
//! revokes JWTs (per user and per jti), keeps an audit trail, and feeds the proxies' key
//! cache (`GET /v1/cache`, contract in `control/FEED.md`). The binary also keeps the
//! offline key tool (`new-key`, `hash-key`, `mint-jwt`) and `import` in `main.rs`.
//!
//! Where things live:
//! - `app.rs`: the router, the bearer-token checks and the per-request middleware;
//!   `token_limit.rs`: the per-client limit on failed token attempts;
//! - `keys.rs`, `revocations.rs`, `audit.rs`, `feed.rs`, `health.rs`: the handlers;
//!   `levers.rs`: the operators' levers (rate overrides, limit modes, the allowlist),
//!   sent to the proxies in the feed's `levers`;
//!   `import.rs` (and `import/`): the bulk import of hashed keys, for the API and the CLI;
//!   `idempotency.rs`: the `Idempotency-Key` of `POST /v1/keys` (a retry never issues a
//!   second key);
//! - `events.rs`: what the proxies report (`POST /v1/events`: refusals, key uses, request
//!   counts, their cache version); `stats.rs`: the counts and versions (`GET /v1/stats`);
//! - `fleet.rs` (and `fleet/`): fleet-wide rate limits (`POST /v1/limits/exchange`,
//!   contract in `control/FLEET.md`): each proxy's consumption exchanged for the fleet's
//!   through Redis, when `GATEHOUSE_REDIS_URL` is set;
//! - `dashboard.rs`: the admin page at `/` (its HTML, script and style in `dashboard/`);
//! - `authz.rs` (and `authz/`): what Envoy's `ext_authz` asks (`ANY /v1/authz/{*rest}`):
//!   the plugin's own decision when `serve --policy` gives the policy, the key alone when not;
//! - `error.rs`: the one JSON error shape, for handler errors and axum's rejections;
//! - `store/`: the storage trait and its SQLite and PostgreSQL implementations, chosen by
//!   the database URL (migrations in `control/migrations/sqlite/` and `.../postgres/`);
//! - `plans.rs`: the plans keys may be issued on, checked on issue and rotation;
//! - `token_lifetime.rs`: how long the proxies accept a JWT, so how long JWT revocations
//!   last;
//! - `cleanup.rs`: the job that purges what expired or was revoked longer ago than the
//!   retention, on one replica at a time;
//! - `follow.rs`: how a replica learns of the changes other replicas commit (PostgreSQL
//!   `LISTEN/NOTIFY`, SQLite a version read), to wake its held long polls;
//! - `config.rs`: `serve` settings; `clock.rs`: the clock; `random.rs`: the CSPRNG.
//!
//! It must never log, store or echo a key's secret (only the issuing response holds it)
//! or a bearer token, and has no default secret.

pub mod app;
pub mod audit;
pub mod authz;
pub mod cleanup;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod feed;
pub mod fleet;
pub mod follow;
pub mod health;
pub mod idempotency;
pub mod import;
pub mod keys;
pub mod levers;
pub mod plans;
pub mod random;
pub mod revocations;
pub mod serve;
pub mod stats;
pub mod store;
pub mod token_lifetime;
pub mod token_limit;

pub use app::{AppState, router};
