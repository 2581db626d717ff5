//! Workflow files: the YAML model (SPEC §2), parsed with line and column
//! for every problem, all problems gathered at once.

pub mod diagnostic;
pub mod yaml;
