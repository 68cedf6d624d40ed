//! `gatehouse-control import FILE`: the import `POST /v1/keys/import` makes (the library's
//! `import.rs`: the same lines, rules, batches and summary), written straight to the
//! database, for a migration before the service first starts or without going through
//! HTTP. It prints the summary as the API answers it, and exits 1 when a line was
//! refused.
//!
//! Keys it imports into the database of a running service reach the proxies at their
//! next poll: another process's changes do not wake the service's long-polls, so a poll
//! sees them when its `wait` ends (at most 60 s).

use gatehouse_control::clock::{Clock, SystemClock};
use gatehouse_control::config::{Config, DatabaseUrl};
use gatehouse_control::import::{Importer, Rules};
use gatehouse_control::plans::Plans;
use gatehouse_control::store::ChangeCtx;
use std::io::Read;

pub const USAGE: &str = "gatehouse-control import FILE [--database-url URL] [--policy FILE]
  reads NDJSON, one key per line (docs/operating.md, \"Migrating keys from another
  gateway\"), from FILE (- for standard input) and writes the keys straight to the
  database, in batches of at most 1000; prints {\"imported\", \"skipped\", \"failed\",
  \"errors\"} and exits 1 if any line was refused, 2 if the import could not run
  environment:
    GATEHOUSE_DATABASE_URL       required (or --database-url): the service's database;
                                 a SQLite file is created if missing
    GATEHOUSE_POLICY, GATEHOUSE_PLANS
                                 the plans keys may be on, as for serve";

/// How much of the input is read at a time.
const READ_SIZE: usize = 64 * 1024;

/// Who the audit trail names as the author of a command-line import.
pub const ACTOR: &str = "cli";

struct Settings {
    /// `None`: standard input.
    file: Option<String>,
    database_url: DatabaseUrl,
    plans: Plans,
}

impl Settings {
    fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let mut database_url = env("GATEHOUSE_DATABASE_URL");
        let mut policy = env("GATEHOUSE_POLICY");
        let mut file = None;
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "--database-url" | "--policy" => {
                    let Some(value) = rest.next().cloned() else {
                        return Err(format!("{arg} needs a value\nusage: {USAGE}"));
                    };
                    if arg == "--policy" {
                        policy = Some(value);
                    } else {
                        database_url = Some(value);
                    }
                }
                _ if file.is_none() && (arg == "-" || !arg.starts_with('-')) => {
                    file = Some(arg.clone());
                }
                _ => return Err(format!("unexpected argument {arg:?}\nusage: {USAGE}")),
            }
        }
        let Some(file) = file else {
            return Err(format!("no FILE to import\nusage: {USAGE}"));
        };
        let Some(url) = database_url else {
            return Err(format!(
                "GATEHOUSE_DATABASE_URL (or --database-url) is not set: the database to \
                 import into\nusage: {USAGE}"
            ));
        };
        let database_url = DatabaseUrl::new(url)?;
        let policy = policy.map(|p| Config::load_policy(&p)).transpose()?;
        let plans = Plans::resolve(env("GATEHOUSE_PLANS").as_deref(), policy.as_deref())?;
        Ok(Settings {
            file: (file != "-").then_some(file),
            database_url,
            plans,
        })
    }
}

/// Runs `gatehouse-control import ARGS`: `Ok(true)` when no line was refused.
pub fn run(args: &[String]) -> Result<bool, String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: {USAGE}");
        return Ok(true);
    }
    let settings = Settings::parse(args, &|k| std::env::var(k).ok())?;
    // The input first: a wrong path fails before the database is opened (or created).
    let input: Box<dyn Read> = match &settings.file {
        None => Box::new(std::io::stdin().lock()),
        Some(path) => {
            Box::new(std::fs::File::open(path).map_err(|e| format!("reading {path}: {e}"))?)
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(import(settings, input))
}

async fn import(settings: Settings, mut input: Box<dyn Read>) -> Result<bool, String> {
    let url = &settings.database_url;
    let store = gatehouse_control::store::open(url.expose())
        .await
        .map_err(|e| format!("opening the database {url}: {e}"))?;
    let now = SystemClock.now_secs();
    let request_id =
        gatehouse_control::random::hex(8).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let ctx = ChangeCtx {
        now,
        actor: ACTOR.to_string(),
        request_id: format!("import-{request_id}"),
        client: None,
    };
    let rules = Rules {
        plans: &settings.plans,
        now,
        clock: &SystemClock,
    };
    let nobody_waits = |_| {};
    // A file has no size limit: only the lines do.
    let mut import = Importer::new(&*store, rules, ctx, &nobody_waits, usize::MAX);
    let name = settings.file.as_deref().unwrap_or("standard input");
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = import.flush().await;
                return Err(format!(
                    "reading {name}: {e}; the keys read until then were imported"
                ));
            }
        };
        import
            .push(buf.get(..n).unwrap_or_default())
            .await
            .map_err(|e| format!("importing into {url}: {e}"))?;
    }
    let summary = import
        .finish()
        .await
        .map_err(|e| format!("importing into {url}: {e}"))?;
    let json = serde_json::to_string(&summary).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(summary.failed == 0)
}
