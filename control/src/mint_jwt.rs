//! `gatehouse-control mint-jwt`: an HMAC-signed JWT (JWS compact, RFC 7515) for local
//! testing and `make run`, signed with a secret read from an environment variable.
//!
//! It must never print, log or put into an error message the secret itself: the secret
//! is only named by its variable. The claims are the ones the plugin maps to an identity
//! (`sub`, `tenant`, `plan`) plus `iat`, `exp` and a random `jti` (so one token can be
//! revoked on its own).

use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384, Sha512};

pub const USAGE: &str = "gatehouse-control mint-jwt --secret-env VAR [--kid KID] [--sub SUB] \
[--tenant T] [--plan P] [--ttl SECONDS] [--alg HS256|HS384|HS512]";

/// Secrets shorter than this are refused whatever the algorithm: RFC 7518 §3.2 requires
/// a key at least as long as the hash, and HS256's is 32 bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// `--ttl` when not given: one hour.
pub const DEFAULT_TTL_SECS: u64 = 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmacAlg {
    HS256,
    HS384,
    HS512,
}

impl HmacAlg {
    fn parse(name: &str) -> Result<HmacAlg, String> {
        match name {
            "HS256" => Ok(HmacAlg::HS256),
            "HS384" => Ok(HmacAlg::HS384),
            "HS512" => Ok(HmacAlg::HS512),
            other => Err(format!(
                "--alg must be one of [HS256, HS384, HS512], got {other:?}"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            HmacAlg::HS256 => "HS256",
            HmacAlg::HS384 => "HS384",
            HmacAlg::HS512 => "HS512",
        }
    }

    /// The hash length, which is also the shortest secret the plugin accepts.
    fn min_secret_len(self) -> usize {
        match self {
            HmacAlg::HS256 => MIN_SECRET_LEN,
            HmacAlg::HS384 => 48,
            HmacAlg::HS512 => 64,
        }
    }
}

/// What to mint, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MintArgs {
    pub secret_env: String,
    pub kid: Option<String>,
    pub sub: Option<String>,
    pub tenant: Option<String>,
    pub plan: Option<String>,
    pub ttl_secs: u64,
    pub alg: HmacAlg,
}

impl MintArgs {
    /// `--flag value` pairs in any order; each flag at most once.
    pub fn parse(args: &[String]) -> Result<MintArgs, String> {
        let mut secret_env = None;
        let mut kid = None;
        let mut sub = None;
        let mut tenant = None;
        let mut plan = None;
        let mut ttl = None;
        let mut alg = None;
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            let slot = match flag.as_str() {
                "--secret-env" => &mut secret_env,
                "--kid" => &mut kid,
                "--sub" => &mut sub,
                "--tenant" => &mut tenant,
                "--plan" => &mut plan,
                "--ttl" => &mut ttl,
                "--alg" => &mut alg,
                other => return Err(format!("unknown option {other:?}\nusage: {USAGE}")),
            };
            let Some(value) = rest.next() else {
                return Err(format!("{flag} needs a value\nusage: {USAGE}"));
            };
            if slot.replace(value.clone()).is_some() {
                return Err(format!("{flag} is given twice"));
            }
        }
        let Some(secret_env) = secret_env else {
            return Err(format!("--secret-env is required\nusage: {USAGE}"));
        };
        let ttl_secs = match ttl {
            None => DEFAULT_TTL_SECS,
            Some(t) => match t.parse::<u64>() {
                Ok(secs) if secs > 0 => secs,
                _ => {
                    return Err(format!(
                        "--ttl must be a positive number of seconds, got {t:?}"
                    ));
                }
            },
        };
        let alg = alg.as_deref().map_or(Ok(HmacAlg::HS256), HmacAlg::parse)?;
        Ok(MintArgs {
            secret_env,
            kid,
            sub,
            tenant,
            plan,
            ttl_secs,
            alg,
        })
    }
}

/// Base64url without padding (RFC 7515 §2), the only encoding a JWS uses.
fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The signed token. `secret` is the variable's value as bytes (as the plugin reads it);
/// `jti` comes from the caller so this stays a pure function.
pub fn mint(args: &MintArgs, secret: &[u8], now_unix: u64, jti: &str) -> Result<String, String> {
    let need = args.alg.min_secret_len();
    if secret.len() < need {
        return Err(format!(
            "the secret in {} is {} bytes; {} needs at least {need} \
             (e.g. 48 random bytes, base64url: `head -c 48 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\\n'`)",
            args.secret_env,
            secret.len(),
            args.alg.name()
        ));
    }
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), args.alg.name().into());
    header.insert("typ".into(), "JWT".into());
    if let Some(kid) = &args.kid {
        header.insert("kid".into(), kid.as_str().into());
    }
    let exp = now_unix
        .checked_add(args.ttl_secs)
        .ok_or_else(|| "--ttl is too large".to_string())?;
    let mut claims = serde_json::Map::new();
    for (name, value) in [
        ("sub", &args.sub),
        ("tenant", &args.tenant),
        ("plan", &args.plan),
    ] {
        if let Some(v) = value {
            claims.insert(name.into(), v.as_str().into());
        }
    }
    claims.insert("iat".into(), now_unix.into());
    claims.insert("exp".into(), exp.into());
    claims.insert("jti".into(), jti.into());
    let signing_input = format!(
        "{}.{}",
        b64url(serde_json::Value::Object(header).to_string().as_bytes()),
        b64url(serde_json::Value::Object(claims).to_string().as_bytes())
    );
    let bad_key = |_| "the HMAC key was refused".to_string();
    let input = signing_input.as_bytes();
    let signature = match args.alg {
        HmacAlg::HS256 => Hmac::<Sha256>::new_from_slice(secret)
            .map_err(bad_key)?
            .chain_update(input)
            .finalize()
            .into_bytes()
            .to_vec(),
        HmacAlg::HS384 => Hmac::<Sha384>::new_from_slice(secret)
            .map_err(bad_key)?
            .chain_update(input)
            .finalize()
            .into_bytes()
            .to_vec(),
        HmacAlg::HS512 => Hmac::<Sha512>::new_from_slice(secret)
            .map_err(bad_key)?
            .chain_update(input)
            .finalize()
            .into_bytes()
            .to_vec(),
    };
    Ok(format!("{signing_input}.{}", b64url(&signature)))
}

/// A random `jti`: 16 bytes from the OS, base64url (22 characters, 128 bits).
pub fn random_jti() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(b64url(&bytes))
}

/// The command: reads the secret from the environment and the clock, prints the token.
pub fn run(args: &[String]) -> Result<(), String> {
    let args = MintArgs::parse(args)?;
    let secret = match std::env::var_os(&args.secret_env) {
        Some(v) if !v.is_empty() => v,
        _ => {
            return Err(format!(
                "the environment variable {} is not set or empty",
                args.secret_env
            ));
        }
    };
    // On Unix the plugin gets the variable's bytes; take them as they are, UTF-8 or not.
    let secret = secret.into_encoded_bytes();
    #[allow(
        clippy::disallowed_methods,
        reason = "a command-line tool stamps iat/exp with the wall clock; the ban is for the plugin core"
    )]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_string())?
        .as_secs();
    println!("{}", mint(&args, &secret, now, &random_jti()?)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<MintArgs, String> {
        MintArgs::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn base64url_matches_rfc_4648_vectors_without_padding() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64url(input.as_bytes()), want);
        }
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn minting_is_deterministic_given_the_clock_and_jti() {
        let a = args(&["--secret-env", "S", "--kid", "k1", "--sub", "u1"]).unwrap();
        let secret = [7u8; 32];
        let t1 = mint(&a, &secret, 1_767_225_600, "j1").unwrap();
        assert_eq!(t1, mint(&a, &secret, 1_767_225_600, "j1").unwrap());
        assert_ne!(t1, mint(&a, &secret, 1_767_225_600, "j2").unwrap());
    }

    #[test]
    fn defaults_are_hs256_and_one_hour() {
        let a = args(&["--secret-env", "S"]).unwrap();
        assert_eq!((a.alg, a.ttl_secs), (HmacAlg::HS256, 3600));
    }

    #[test]
    fn bad_options_are_refused_with_the_option_named() {
        for (list, needle) in [
            (&["--kid", "k"][..], "--secret-env is required"),
            (&["--secret-env"][..], "needs a value"),
            (&["--secret-env", "S", "--ttl", "0"][..], "--ttl must be"),
            (&["--secret-env", "S", "--ttl", "-5"][..], "--ttl must be"),
            (
                &["--secret-env", "S", "--alg", "RS256"][..],
                "--alg must be one of",
            ),
            (
                &["--secret-env", "S", "--sub", "a", "--sub", "b"][..],
                "given twice",
            ),
            (&["--secret-env", "S", "--frob", "x"][..], "unknown option"),
        ] {
            let err = args(list).unwrap_err();
            assert!(err.contains(needle), "{list:?}: {err}");
        }
    }

    #[test]
    fn short_secrets_are_refused_without_showing_them() {
        let a = args(&["--secret-env", "S", "--alg", "HS512"]).unwrap();
        let err = mint(&a, &[b'z'; 48], 0, "j").unwrap_err();
        assert!(
            err.contains("48 bytes") && err.contains("at least 64"),
            "{err}"
        );
        assert!(!err.contains("zzzz"), "{err}");
    }
}
