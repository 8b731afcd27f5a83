//! The ACL: prefix sets, rules and per-interface default policies.
//!
//! [`model`] holds the operator-facing state and validates changes to it, and
//! [`compile`] turns a state into the tables the datapath reads. With the
//! `test-support` feature: [`reference`], a plain-Rust classifier written from
//! the semantics in `docs/design/acl.md` (the differential test's oracle), and
//! [`random`], seeded random rule sets and packets for differential tests and
//! benchmarks.
/// Compiling a state into datapath tables.
pub mod compile;
#[cfg(test)]
mod incr_tests;
/// A rule's rate limit.
pub mod limit;
/// Operator-facing state and validation.
pub mod model;
/// Seeded random rule sets and packets for differential tests and benchmarks.
#[cfg(any(test, feature = "test-support"))]
pub mod random;
/// The reference classifier.
#[cfg(any(test, feature = "test-support"))]
pub mod reference;

pub use limit::{Limit, LimitKey};
pub use model::{
    AclError, AclState, AddrMatch, Applied, Change, Exceeded, PortRange, PrefixSet, Rule, RuleFile,
    Undo, Verdict,
};
