//! [`Exceeded`]: a capacity the configuration sets, exceeded.
use serde::Serialize;
use thiserror::Error;

/// A capacity the configuration sets (`[acl]`), exceeded by a change: the
/// message names the key and its value.
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize)]
#[error("{what}: {have} needed, {key} = {setting} holds {max}")]
pub struct Exceeded {
    /// What ran out.
    pub what: &'static str,
    /// The configuration key that sets the capacity.
    pub key: &'static str,
    /// The key's value in force.
    pub setting: usize,
    /// How many the change would need.
    pub have: usize,
    /// How many the capacity holds.
    pub max: usize,
}
