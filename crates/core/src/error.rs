//! Validation errors of the domain types, worded for API clients.

use thiserror::Error;

/// Why a value could not become a domain type. The messages name the JSON
/// field, because the HTTP layer passes them to clients unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ValidationError {
    /// A required text was empty (after trimming, for names).
    #[error("{field} must not be empty")]
    Empty {
        /// The field's name in the API.
        field: &'static str,
    },
    /// A text exceeded its length limit.
    #[error("{field} must be at most {max} {unit}, got {actual}")]
    TooLong {
        /// The field's name in the API.
        field: &'static str,
        /// The limit.
        max: usize,
        /// What the limit counts: "bytes" or "characters".
        unit: &'static str,
        /// The length received.
        actual: usize,
    },
    /// An identifier was not a UUID.
    #[error("{field} must be a UUID, got {value:?}")]
    NotAUuid {
        /// The field's name in the API.
        field: &'static str,
        /// The start of the text received (never the whole of a huge input).
        value: String,
    },
}

/// The first 64 characters of `s`, so an error never echoes a huge input.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_on_character_boundaries() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(100);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), 65);
        assert!(cut.ends_with('…'));
    }
}
