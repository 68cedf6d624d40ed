//! The policy's JWT and revocation sections, decoded into validated types.
//! Every field and its default: `docs/policy.md#jwt`; secrets: `docs/policy.md#writing-a-policy`.

use crate::authn::jwt::{Alg, Key, KeySet, Rules, parse_jwks};

use crate::authn::revocation::{JtiRevocation, UserRevocation};

/// Where an HMAC key's secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The value of this environment variable, read when the plugin configures.
    Env(String),
    /// A literal, allowed only for keys marked `test_fixture`.
    Literal(Vec<u8>),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Env(name) => write!(f, "Env({name})"),
            Secret::Literal(_) => f.write_str("Literal(<redacted>)"),
        }
    }
}

/// How the secret's text turns into key bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretEncoding {
    /// The text's bytes, as they are.
    Raw,
    /// Base64url without padding (a JWK `k`), for secrets that are random bytes.
    Base64Url,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HmacKey {
    pub kid: Option<String>,
    pub alg: Alg,
    pub secret: Secret,
    pub encoding: SecretEncoding,
}

impl HmacKey {
    /// The key bytes from the secret's text; the error never shows the secret.
    pub fn decode_secret(&self, text: &[u8]) -> Result<Vec<u8>, String> {
        match self.encoding {
            SecretEncoding::Raw => Ok(text.to_vec()),
            SecretEncoding::Base64Url => crate::authn::jwt::b64::decode(text)
                .map_err(|_| "the secret is not base64url (encoding: base64url)".to_string()),
        }
    }
}

/// A JWKS fetched from an Envoy cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksUrl {
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub refresh_secs: u64,
    pub min_refetch_secs: u64,
}

/// Claim names mapped to the identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimNames {
    pub user: String,
    pub tenant: String,
    pub plan: String,
}

/// The `jwt` section: one or more providers (`jwt: { providers: [...] }`), each one
/// issuer's (or one set of issuers') keys, rules and claim mapping, as Envoy's `jwt_authn`
/// groups them. A section without `providers` is one provider named `jwt`.
///
/// A token goes to the provider whose `issuers` hold its `iss`, read before the signature
/// is checked (only to choose the keys: the chosen provider's rules check `iss` again on
/// the verified claims), so a key verifies tokens of its own issuer only. With more than
/// one provider each must list its issuers, and no issuer may be in two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtPolicy {
    pub providers: Vec<JwtProvider>,
}

/// The name the one provider of a `jwt` section without `providers` gets (unless it
/// says `name:`).
pub const SINGLE_PROVIDER_NAME: &str = "jwt";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtProvider {
    /// Sent upstream as `x-gatehouse-issuer`, and part of the rate-limit caller of its
    /// tokens, so two providers' `sub` (or tenant) values never share a limit.
    pub name: String,
    /// Where it is in the policy (`jwt`, `jwt.providers[1]`), for messages.
    pub path: String,
    pub rules: Rules,
    pub claims: ClaimNames,
    pub default_tenant: Option<String>,
    pub default_plan: Option<String>,
    /// (claim, upstream header) pairs; headers are `x-gatehouse-*`.
    pub forward_claims: Vec<(String, String)>,
    pub hmac_keys: Vec<HmacKey>,
    /// The inline JWKS document, already checked to parse with at least one usable key.
    pub jwks_inline: Option<String>,
    pub jwks_url: Option<JwksUrl>,
    /// The algorithm for JWKS RSA keys that do not say.
    pub rsa_alg: Alg,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    pub users: Vec<UserRevocation>,
    pub jtis: Vec<JtiRevocation>,
}

impl JwtPolicy {
    /// How long after its `iat` a token of any provider can still be accepted
    /// ([`Rules::longest_acceptance_secs`]); `None`: some provider is unbounded.
    pub fn longest_acceptance_secs(&self) -> Option<u64> {
        self.providers.iter().try_fold(0, |longest, p| {
            p.rules
                .longest_acceptance_secs()
                .map(|secs| secs.max(longest))
        })
    }

    /// The provider that `iss` belongs to: the only one, or the one listing it.
    pub fn provider_for(&self, iss: Option<&str>) -> Option<usize> {
        match self.providers.as_slice() {
            [_] => Some(0),
            providers => {
                let iss = iss?;
                providers
                    .iter()
                    .position(|p| p.rules.issuers.iter().any(|i| i == iss))
            }
        }
    }

    /// The largest token any provider accepts, for reading `iss` before choosing one.
    pub fn max_token_bytes(&self) -> usize {
        self.providers
            .iter()
            .map(|p| p.rules.max_size)
            .max()
            .unwrap_or(0)
    }
}

impl JwtProvider {
    /// The keys known without fetching: HMAC keys (secrets from `env`) and the inline
    /// JWKS. An error names the environment variable or the key, never a secret.
    pub fn static_keys(&self, env: impl Fn(&str) -> Option<String>) -> Result<KeySet, String> {
        let mut keys = Vec::new();
        for (i, k) in self.hmac_keys.iter().enumerate() {
            let text = match &k.secret {
                Secret::Literal(bytes) => bytes.clone(),
                Secret::Env(name) => match env(name) {
                    Some(v) if !v.is_empty() => v.into_bytes(),
                    _ => {
                        return Err(format!(
                            "{}.keys[{i}]: the environment variable {name} is not set or empty \
                             (Envoy passes it with vm_config.environment_variables)",
                            self.path
                        ));
                    }
                },
            };
            let secret = k
                .decode_secret(&text)
                .map_err(|e| format!("{}.keys[{i}]: {e}", self.path))?;
            let key = Key::hmac(k.alg, &secret, k.kid.clone())
                .map_err(|e| format!("{}.keys[{i}]: {e}", self.path))?;
            keys.push(key);
        }
        if let Some(doc) = &self.jwks_inline {
            let jwks = parse_jwks(doc.as_bytes(), Some(self.rsa_alg))
                .map_err(|e| format!("{}.jwks: {e}", self.path))?;
            keys.extend(jwks.keys);
        }
        Ok(KeySet::new(keys))
    }
}
