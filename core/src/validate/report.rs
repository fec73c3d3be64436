//! Violations with field paths, collected into one report.

use std::fmt;

use serde::Serialize;

/// How bad a violation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object is invalid.
    Error,
    /// Accepted, but probably not what was meant.
    Warning,
}

/// One problem, at a field path such as
/// `spec.template.spec.domain.devices.interfaces[1].ports[0].port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Full field path from the document root.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => write!(f, "{}: {}", self.path, self.message),
            Severity::Warning => write!(f, "{}: warning: {}", self.path, self.message),
        }
    }
}

/// Every problem found in one document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// All violations, in the order found.
    pub violations: Vec<Violation>,
}

impl Report {
    /// True when there is no error (warnings allowed).
    pub fn is_valid(&self) -> bool {
        !self
            .violations
            .iter()
            .any(|v| v.severity == Severity::Error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| v.severity == Severity::Error)
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| v.severity == Severity::Warning)
    }

    /// Record an error.
    pub fn error(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.violations.push(Violation {
            path: path.to_string(),
            message: message.into(),
            severity: Severity::Error,
        });
    }

    /// Record a warning.
    pub fn warn(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.violations.push(Violation {
            path: path.to_string(),
            message: message.into(),
            severity: Severity::Warning,
        });
    }

    /// Append another report's violations.
    pub fn extend(&mut self, other: Report) {
        self.violations.extend(other.violations);
    }

    /// Whether some violation sits at exactly `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.violations.iter().any(|v| v.path == path)
    }
}

/// A field path under construction: `P::root("spec").field("domain").index(0)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P(String);

impl P {
    /// A path starting at a top-level field.
    pub fn root(name: &str) -> P {
        P(name.to_string())
    }
    /// `self.name`.
    pub fn field(&self, name: &str) -> P {
        if self.0.is_empty() {
            P(name.to_string())
        } else {
            P(format!("{}.{name}", self.0))
        }
    }
    /// `self[i]`.
    pub fn index(&self, i: usize) -> P {
        P(format!("{}[{i}]", self.0))
    }
    /// The path text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
