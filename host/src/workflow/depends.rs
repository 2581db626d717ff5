//! `depends:` expressions (Argo's enhanced depends): which outcomes of
//! the steps it names let a step run.
//!
//! ```text
//! depends: "build && (test.failed || test.skipped)"
//! ```
//!
//! A bare id `X` means what `needs: [X]` allows: `X` succeeded, was
//! skipped, or failed under `on_error: continue` (Argo's `continueOn`).
//! Argo's capitalised spellings are read too, so expressions can be pasted.

use super::diagnostic::{Diagnostic, Location};

/// What an expression asks of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// A bare id: the step allows its dependents to run.
    Allows,
    /// `ID.Succeeded`.
    Succeeded,
    /// `ID.Failed`.
    Failed,
    /// `ID.Skipped`.
    Skipped,
    /// `ID.Cancelled`.
    Cancelled,
    /// A `forEach` step with at least one item that succeeded (any other
    /// step: it succeeded).
    AnySucceeded,
    /// A `forEach` step whose every item failed (any other step: it failed).
    AllFailed,
}

impl Cond {
    /// The spellings after `X.`: ours, then Argo's.
    const NAMES: [(&'static str, Cond); 14] = [
        ("succeeded", Cond::Succeeded),
        ("failed", Cond::Failed),
        ("skipped", Cond::Skipped),
        ("cancelled", Cond::Cancelled),
        ("any_succeeded", Cond::AnySucceeded),
        ("all_failed", Cond::AllFailed),
        ("Succeeded", Cond::Succeeded),
        ("Failed", Cond::Failed),
        ("Skipped", Cond::Skipped),
        // Argo: a task not run because its depends was false.
        ("Omitted", Cond::Skipped),
        // Argo: the task could not run (no pod). sandflow has one failed state.
        ("Errored", Cond::Failed),
        ("AnySucceeded", Cond::AnySucceeded),
        ("AllFailed", Cond::AllFailed),
        ("Cancelled", Cond::Cancelled),
    ];

    /// Whether a failure this names is handled by the step asking.
    pub fn handles_failure(self) -> bool {
        matches!(self, Cond::Failed | Cond::AllFailed)
    }
}

/// A parsed `depends:` expression.
#[derive(Debug, Clone)]
pub struct Depends {
    /// The expression as written.
    pub text: String,
    /// Where it is written.
    pub at: Location,
    expr: Expr,
}

#[derive(Debug, Clone)]
enum Expr {
    Step(String, Cond),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Depends {
    /// Parses `text`, written at `at`.
    pub fn parse(text: &str, at: &Location) -> Result<Depends, Diagnostic> {
        let tokens = tokens(text).map_err(|(col, m)| problem(text, at, col, m))?;
        let mut p = Parser { tokens: &tokens, pos: 0 };
        let expr = p.or().map_err(|(col, m)| problem(text, at, col, m))?;
        if let Some((col, t)) = tokens.get(p.pos) {
            return Err(problem(text, at, *col, format!("unexpected `{}`", t.text())));
        }
        Ok(Depends { text: text.to_string(), at: at.clone(), expr })
    }

    /// Every step the expression names, with what it asks of it, in order.
    pub fn refs(&self) -> Vec<(&str, Cond)> {
        fn walk<'a>(e: &'a Expr, out: &mut Vec<(&'a str, Cond)>) {
            match e {
                Expr::Step(id, c) => out.push((id, *c)),
                Expr::Not(a) => walk(a, out),
                Expr::And(a, b) | Expr::Or(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.expr, &mut out);
        out
    }

    /// Whether the expression holds, with `test` telling whether a named
    /// step meets a condition.
    pub fn eval(&self, test: &dyn Fn(&str, Cond) -> bool) -> bool {
        fn go(e: &Expr, test: &dyn Fn(&str, Cond) -> bool) -> bool {
            match e {
                Expr::Step(id, c) => test(id, *c),
                Expr::Not(a) => !go(a, test),
                Expr::And(a, b) => go(a, test) && go(b, test),
                Expr::Or(a, b) => go(a, test) || go(b, test),
            }
        }
        go(&self.expr, test)
    }
}

fn problem(text: &str, at: &Location, col: usize, message: impl Into<String>) -> Diagnostic {
    Diagnostic::new(at, format!("invalid `depends` `{text}` at character {}: {}", col + 1, message.into()))
        .with_hint("e.g. `build && (test.failed || test.skipped)`; conditions: succeeded, failed, skipped, cancelled, any_succeeded, all_failed")
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Id(String),
    Dot,
    And,
    Or,
    Not,
    Open,
    Close,
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Id(s) => s.clone(),
            Tok::Dot => ".".into(),
            Tok::And => "&&".into(),
            Tok::Or => "||".into(),
            Tok::Not => "!".into(),
            Tok::Open => "(".into(),
            Tok::Close => ")".into(),
        }
    }
}

/// Tokens with the character offset each starts at.
fn tokens(text: &str) -> Result<Vec<(usize, Tok)>, (usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let two = |s: &str| chars.get(i + 1) == s.chars().nth(1).as_ref() && c == s.chars().next().expect("two chars");
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '.' => {
                out.push((i, Tok::Dot));
                i += 1;
            }
            '(' => {
                out.push((i, Tok::Open));
                i += 1;
            }
            ')' => {
                out.push((i, Tok::Close));
                i += 1;
            }
            '!' => {
                out.push((i, Tok::Not));
                i += 1;
            }
            '&' if two("&&") => {
                out.push((i, Tok::And));
                i += 2;
            }
            '|' if two("||") => {
                out.push((i, Tok::Or));
                i += 2;
            }
            '&' | '|' => return Err((i, format!("`{c}` alone; write `{c}{c}`"))),
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '-') {
                    i += 1;
                }
                out.push((start, Tok::Id(chars[start..i].iter().collect())));
            }
            other => return Err((i, format!("unexpected `{other}`"))),
        }
    }
    Ok(out)
}

struct Parser<'t> {
    tokens: &'t [(usize, Tok)],
    pos: usize,
}

type Parsed = Result<Expr, (usize, String)>;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    /// Where the next token starts (the end of the text when there is none).
    fn col(&self) -> usize {
        self.tokens.get(self.pos).map_or_else(|| self.tokens.last().map_or(0, |(c, t)| c + t.text().len()), |(c, _)| *c)
    }

    fn or(&mut self) -> Parsed {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Parsed {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Parsed {
        let col = self.col();
        match self.peek().cloned() {
            Some(Tok::Not) => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(Tok::Open) => {
                self.pos += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err((self.col(), format!("the `(` at character {} is not closed", col + 1)));
                }
                self.pos += 1;
                Ok(inner)
            }
            Some(Tok::Id(id)) => {
                self.pos += 1;
                if self.peek() != Some(&Tok::Dot) {
                    return Ok(Expr::Step(id, Cond::Allows));
                }
                self.pos += 1;
                let col = self.col();
                match self.peek().cloned() {
                    Some(Tok::Id(name)) => {
                        self.pos += 1;
                        match Cond::NAMES.iter().find(|(n, _)| *n == name) {
                            Some((_, c)) => Ok(Expr::Step(id, *c)),
                            None => {
                                let known = Cond::NAMES[..6].iter().map(|(n, _)| *n);
                                let hint = match super::diagnostic::nearest(&name, known) {
                                    Some(n) => format!("; did you mean `{n}`?"),
                                    None => String::new(),
                                };
                                Err((col, format!("`{id}.{name}` is not a condition{hint}")))
                            }
                        }
                    }
                    _ => Err((col, format!("a condition after `{id}.`"))),
                }
            }
            Some(t) => Err((col, format!("expected a step id, `!` or `(`, found `{}`", t.text()))),
            None => Err((col, "the expression ends where a step id was expected".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    fn at() -> Location {
        Location { file: Arc::from(Path::new("f.yaml")), line: 3, column: 14 }
    }

    #[test]
    fn precedence_negation_and_parentheses() {
        let d = Depends::parse("a && (b.failed || !c.Skipped) || d-1.any_succeeded", &at()).expect("parses");
        assert_eq!(
            d.refs(),
            [("a", Cond::Allows), ("b", Cond::Failed), ("c", Cond::Skipped), ("d-1", Cond::AnySucceeded)]
        );
        let holds = |yes: &[(&str, Cond)]| d.eval(&|id, c| yes.contains(&(id, c)));
        assert!(holds(&[("a", Cond::Allows), ("b", Cond::Failed)]));
        assert!(holds(&[("a", Cond::Allows)]), "!c.skipped holds when c was not skipped");
        assert!(!holds(&[("a", Cond::Allows), ("c", Cond::Skipped)]));
        assert!(holds(&[("d-1", Cond::AnySucceeded)]), "|| binds looser than &&");
    }

    #[test]
    fn problems_say_where_and_what() {
        let err = |t: &str| Depends::parse(t, &at()).expect_err(t).message;
        assert_eq!(err("a && b.failde"), "invalid `depends` `a && b.failde` at character 8: `b.failde` is not a condition; did you mean `failed`?");
        assert_eq!(err("a & b"), "invalid `depends` `a & b` at character 3: `&` alone; write `&&`");
        assert_eq!(err("(a || b"), "invalid `depends` `(a || b` at character 8: the `(` at character 1 is not closed");
        assert_eq!(err("a b"), "invalid `depends` `a b` at character 3: unexpected `b`");
        assert_eq!(err("a &&"), "invalid `depends` `a &&` at character 5: the expression ends where a step id was expected");
    }
}
