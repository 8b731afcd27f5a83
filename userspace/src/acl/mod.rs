//! The ACL: prefix sets, rules and per-interface default policies.
//!
//! [`model`] holds the operator-facing state and validates changes to it,
//! [`reference`] is a plain-Rust classifier written from the semantics in
//! `docs/design/acl.md` (the differential test's oracle), and [`compile`] turns a
//! state into the tables the datapath reads.
/// Compiling a state into datapath tables, and evaluating those tables in software.
pub mod compile;
/// Operator-facing state and validation.
pub mod model;
/// Seeded random rule sets and packets for differential tests and benchmarks.
pub mod random;
/// The reference classifier.
pub mod reference;

pub use model::{
    AclError, AclState, AddrMatch, Change, PortRange, PrefixSet, Rule, RuleFile, Verdict,
};
