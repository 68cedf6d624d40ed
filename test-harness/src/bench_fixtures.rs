//! The request the benches and `examples/profile_request.rs` measure: one policy, one
//! key, one token, shared so that fuel and times from either are about the same thing.

/// The policy: the demo key on the team plan, an HS256 JWT key, a route with a route
/// limit on top of the plan's (`/v1/export`) and one with the plan's only (`/v1/`). The
/// token lifetime is unbounded: the benches move the virtual clock a second per request,
/// so a fixed token of a day's lifetime would expire during a long run.
pub const HARNESS_POLICY_JSON: &str = r#"{
  "version": 1,
  "keys": [{"id": "key_demo", "sha256": "ea4d1b2a0167d9569b431fc952792261ff21c7e8da3bb4e49b66fd9bf07ef55f",
            "user": "user_demo", "tenant": "tenant_demo", "plan": "team"}],
  "jwt": {"keys": [{"kid": "demo-hs256", "alg": "HS256", "secret_env": "GATEHOUSE_JWT_SECRET"}],
          "claims": {"user": "sub", "tenant": "tenant", "plan": "plan"},
          "default_tenant": "tenant_demo", "default_plan": "free",
          "max_token_lifetime": "unbounded"},
  "routes": [
    {"name": "export", "match": {"path_prefix": "/v1/export"},
     "limits": [{"requests": 3600, "per": "1h", "by": "user"}]},
    {"name": "api", "match": {"path_prefix": "/v1/"}, "audience": "internal"}
  ]
}"#;

/// The demo key, whose SHA-256 the policy holds.
pub const HARNESS_KEY: &str = "ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";

/// The HMAC secret of the policy's JWT key (`GATEHOUSE_JWT_SECRET`). A test value.
pub const HARNESS_JWT_SECRET: &str = "gatehouse-test-secret-0123456789abcdef-xyz";

/// HS256 under [`HARNESS_JWT_SECRET`], kid `demo-hs256`: `{"sub":"user_jwt","plan":"team",
/// "email":"jwt@example.com","iat":1767225000,"exp":4070908800,"jti":"t-1"}`.
pub const HARNESS_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRlbW8taHMyNTYifQ.eyJzdWIiOiJ1c2VyX2p3dCIsInBsYW4iOiJ0ZWFtIiwiZW1haWwiOiJqd3RAZXhhbXBsZS5jb20iLCJpYXQiOjE3NjcyMjUwMDAsImV4cCI6NDA3MDkwODgwMCwianRpIjoidC0xIn0.cKKyGCP7aR1MhPxsdXYNuWpK8kdGNdG2pMUkdufZC20";

/// Runs `f` (one request, say) and says what it cost the module, deterministically:
/// wasmtime fuel (about one unit per wasm instruction) and the host calls it made, as
/// `"<fuel> fuel, <n> host calls (<call> <count>, ...)"`.
pub fn measure<T>(
    h: &mut crate::host::Harness,
    f: impl FnOnce(&mut crate::host::Harness) -> T,
) -> (T, String) {
    let (fuel, calls) = (h.fuel_used(), h.host_call_counts());
    let out = f(h);
    let fuel = h.fuel_used() - fuel;
    let mut per_call: Vec<(String, u64)> = h
        .host_call_counts()
        .into_iter()
        .filter_map(|(call, n)| {
            let d = n - calls.get(&call).copied().unwrap_or(0);
            (d > 0).then_some((call, d))
        })
        .collect();
    per_call.sort();
    let total: u64 = per_call.iter().map(|(_, d)| d).sum();
    let list: Vec<String> = per_call.iter().map(|(c, d)| format!("{c} {d}")).collect();
    let text = format!("{fuel} fuel, {total} host calls ({})", list.join(", "));
    (out, text)
}
