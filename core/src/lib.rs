//! gatehouse-core: every decision gatehouse makes, with no proxy-wasm in it. It takes
//! plain values (a request head, [`store::SharedStore`], a [`clock::Clock`]) and returns
//! an outcome, so it compiles natively and to wasm32 and is unit-tested without a VM.
//! The map of its modules: `docs/layout.md#where-each-part-lives`.

pub mod authn;
pub mod body;
pub mod clock;
pub mod cors;
pub mod health;
pub mod levers;
pub mod limit;
pub mod observe;
pub mod pipeline;
pub mod policy;
pub mod refusal;
pub mod request;
pub mod response;
pub mod route;
pub mod store;
pub mod sync;
pub mod text;
pub mod time;
pub mod worker;
