//! Policy: zero-trust rules over identity × fingerprint × destination, written in Cedar.
//!
//! This crate is the domain logic only — no async, no SQL — so it can be property tested and
//! benchmarked on its own, and run offline (`hais-control-plane policy check FILE…`). The control
//! plane's `policy` service stores versioned sets, compiles them here, and evaluates every event
//! of the stream.
//!
//! * [`schema`]: what a policy can say about a flow (principal = the workload with its trust
//!   domain, namespace, service account and host; action = the connection kind; resource = the
//!   destination; context = the fingerprints and threat enrichment).
//! * [`facts`]: one event in those terms, and as a Cedar request.
//! * [`set`]: compiling sources into a [`Compiled`] set, or [`Problem`]s with file, line and
//!   column; our annotations (`@id`, `@effect`, `@severity`, `@mode`).
//! * [`eval`]: the explained [`Decision`] on one flow.
//!
//! Why Cedar rather than a home-made language or Rego: default deny, forbid overriding permit,
//! validation against a schema before anything is applied (a typo in an attribute name is an
//! error at `PUT`, not a silently false condition), and a decision that names the policies that
//! determined it — Rego (regorus) answers with a value and no deciding rule.

pub mod eval;
pub mod facts;
pub mod schema;
pub mod set;

pub use eval::{DEFAULT_DENY, Deciding, Decision, EvalError};
pub use facts::{Enrichment, Facts, Kind};
pub use set::{Compiled, Outcome, PolicyMeta, Problem, Source, compile, load_sources};
