//! gatehouse-control: the control service (`serve`, see the library's `lib.rs`) and the
//! offline key tool for DB-less policies:
//!
//! - `gatehouse-control serve [--listen ADDR] [--database-url URL]` runs the service;
//!   both bearer tokens come from the environment (`GATEHOUSE_ADMIN_TOKEN`,
//!   `GATEHOUSE_FEED_TOKEN`) and start-up fails, naming them, when either is missing;
//! - `gatehouse-control new-key [--prefix P]` prints a fresh key (shown once) and the
//!   policy entry for it, which holds only the key's SHA-256;
//! - `gatehouse-control hash-key` reads a key on standard input and prints its SHA-256,
//!   with the same function the plugin uses to look keys up;
//! - `gatehouse-control new-token` prints a bearer token for `GATEHOUSE_ADMIN_TOKEN` or
//!   `GATEHOUSE_FEED_TOKEN`: 43 base62 characters (256 bits) from the OS CSPRNG;
//! - `gatehouse-control mint-jwt --secret-env VAR ...` prints an HMAC-signed JWT for
//!   local testing (see `mint_jwt.rs`);
//! - `gatehouse-control import FILE` imports hashed keys (NDJSON) straight into the
//!   database, as `POST /v1/keys/import` does (see `import_cli.rs`).

mod import_cli;
mod mint_jwt;

use gatehouse_core::authn::api_key::{KeyHash, is_valid_prefix};
use std::io::Read;
use std::process::ExitCode;

const USAGE: &str = "usage:
  gatehouse-control serve [--listen ADDR] [--database-url URL] [--policy FILE]
                                                run the control service (serve --help)
  gatehouse-control new-key [--prefix PREFIX]   print a new API key and its policy entry
  gatehouse-control hash-key                    read a key on stdin, print its SHA-256
  gatehouse-control new-token                   print a bearer token for the admin or feed
                                                token (GATEHOUSE_ADMIN_TOKEN, ..._FEED_TOKEN)
  gatehouse-control mint-jwt --secret-env VAR [--kid KID] [--sub SUB] [--tenant T]
      [--plan P] [--ttl SECONDS] [--alg HS256|HS384|HS512]
                                                print a JWT signed with the secret in $VAR
  gatehouse-control import FILE [--database-url URL] [--policy FILE]
                                                import hashed keys (NDJSON, - for stdin)
                                                into the database (import --help)";

fn new_key(args: &[String]) -> Result<(), String> {
    let prefix = match args {
        [] => "ghk".to_string(),
        [flag, p] if flag == "--prefix" => p.clone(),
        _ => return Err(USAGE.to_string()),
    };
    if !is_valid_prefix(&prefix) {
        return Err(format!(
            "--prefix must start with a-z and have 1 to 32 of a-z 0-9 _, got {prefix:?}"
        ));
    }
    // <prefix>_<random><checksum>: the plugin refuses a mistyped key before any lookup.
    // The id is drawn apart from the secret, as the API draws it.
    let key = gatehouse_control::keys::draw_key(&prefix)
        .map_err(|e| format!("no randomness from the OS: {e}"))?;
    println!("api key (shown once, store it now): {}", key.secret);
    println!();
    println!("policy entry:");
    println!("  - id: {}", key.id);
    println!("    sha256: {}", key.sha256);
    println!("    user: USER");
    println!("    tenant: TENANT");
    println!("    plan: free");
    Ok(())
}

fn hash_key() -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let key = input.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        return Err("no key on standard input".to_string());
    }
    println!("{}", KeyHash::of_key(key.as_bytes()).to_hex());
    Ok(())
}

/// Base62 characters of a token `new-token` prints: 256 bits.
const NEW_TOKEN_LEN: usize = 43;

fn new_token() -> Result<(), String> {
    let token = gatehouse_control::random::base62(NEW_TOKEN_LEN)
        .map_err(|e| format!("no randomness from the OS: {e}"))?;
    println!("{token}");
    Ok(())
}

fn serve(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: {}", gatehouse_control::config::USAGE);
        return Ok(());
    }
    // Settings first: a missing token fails before anything is opened or bound.
    let config = gatehouse_control::config::Config::parse(args, &|k| std::env::var(k).ok())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(gatehouse_control::serve::run(config))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((cmd, rest)) if cmd == "serve" => serve(rest),
        Some((cmd, rest)) if cmd == "new-key" => new_key(rest),
        Some((cmd, [])) if cmd == "hash-key" => hash_key(),
        Some((cmd, [])) if cmd == "new-token" => new_token(),
        Some((cmd, rest)) if cmd == "mint-jwt" => mint_jwt::run(rest),
        // Exit 1: the import ran, and some line was refused (the summary says which).
        Some((cmd, rest)) if cmd == "import" => match import_cli::run(rest) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(message) => Err(message),
        },
        Some((cmd, _)) if cmd == "--help" || cmd == "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}
