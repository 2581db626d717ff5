//! Problems found in a workflow file, each with file, line and column, all
//! gathered before anything runs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A place in a workflow file (line and column count from 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// The workflow file.
    pub file: Arc<Path>,
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1.
    pub column: usize,
}

impl Location {
    /// The start of `file`, for problems with the file as a whole.
    pub fn file_start(file: &Arc<Path>) -> Self {
        Location { file: file.clone(), line: 1, column: 1 }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem: where, what, and (when there is one) what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is.
    pub location: Location,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem at `location`, with no hint yet.
    pub fn new(location: &Location, message: impl Into<String>) -> Self {
        Diagnostic { location: location.clone(), message: message.into(), hint: None }
    }

    /// Adds what to do about it.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// Every problem found in one workflow, in file order. The error of
/// loading, planning and validating a workflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics {
    /// The workflow file.
    pub file: PathBuf,
    /// Each problem, in file order.
    pub problems: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Sorts problems by file (this workflow's first, then nested ones)
    /// and position, and drops exact repeats.
    pub fn sorted(mut self) -> Self {
        let main = self.file.clone();
        self.problems.sort_by(|a, b| {
            let key = |d: &Diagnostic| (*d.location.file != *main, d.location.file.clone(), d.location.line, d.location.column);
            key(a).cmp(&key(b)).then_with(|| a.message.cmp(&b.message))
        });
        self.problems.dedup();
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}; nothing was run",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )
    }
}

/// The known name nearest to `unknown`, if one is close enough to be a typo.
/// A typo is a small edit distance, or a known name that starts with what
/// was written (`default` for `default_output`).
pub fn nearest<'a>(unknown: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let unknown = unknown.to_lowercase();
    known
        .into_iter()
        .filter_map(|k| {
            let lower = k.to_lowercase();
            let d = strsim::damerau_levenshtein(&unknown, &lower);
            // A key the text begins (`$lit` of `$literal`) beats a typo.
            if unknown.len() >= 4 && lower.starts_with(&unknown) {
                Some(((0, k.len() - unknown.len()), k))
            } else if d <= (k.len() / 3).max(2) {
                Some(((1, d), k))
            } else {
                None
            }
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::nearest;

    #[test]
    fn nearest_suggests_typos_only() {
        let keys = ["needs", "input", "component", "on_error", "forEach"];
        assert_eq!(nearest("nedds", keys), Some("needs"));
        assert_eq!(nearest("inputs", keys), Some("input"));
        assert_eq!(nearest("foreach", keys), Some("forEach"));
        assert_eq!(nearest("compnent", keys), Some("component"));
        assert_eq!(nearest("banana", keys), None);
        assert_eq!(nearest("default", ["action", "default_output"]), Some("default_output"));
    }
}
