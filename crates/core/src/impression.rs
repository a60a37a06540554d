//! Impressions: one ad view by one user, and what the engine decided about it.

use std::fmt;

use crate::campaign::CampaignId;
use crate::error::ValidationError;
use crate::time::Timestamp;

/// Longest user or ad identifier accepted, in bytes. Identifiers are hashed
/// into a fingerprint, never stored, so the limit bounds request size and
/// hashing time, not memory.
pub const MAX_ID_BYTES: usize = 512;

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks the length (1..=512 bytes); the text is kept exactly
            /// as sent, without trimming, because clients compare ids
            /// byte for byte.
            pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
                let raw = raw.into();
                if raw.is_empty() {
                    return Err(ValidationError::Empty { field: $field });
                }
                if raw.len() > MAX_ID_BYTES {
                    return Err(ValidationError::TooLong {
                        field: $field,
                        max: MAX_ID_BYTES,
                        unit: "bytes",
                        actual: raw.len(),
                    });
                }
                Ok($name(raw))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

opaque_id!(
    /// The viewer, as identified by the client (cookie, device id, ...).
    UserId,
    "user_id"
);
opaque_id!(
    /// The creative shown, as identified by the client.
    AdId,
    "ad_id"
);

/// One ad view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Impression {
    /// The campaign the ad belongs to.
    pub campaign_id: CampaignId,
    /// The creative shown.
    pub ad_id: AdId,
    /// Who saw it.
    pub user_id: UserId,
    /// When it happened: the moment the server received it.
    pub timestamp: Timestamp,
}

/// What the engine did with one impression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrackOutcome {
    /// Counted: it is in the campaign's totals and windows.
    Counted,
    /// Not counted: the same key was counted less than one TTL away.
    Duplicate,
    /// Not counted, and not a duplicate either: see the reason.
    Rejected(Rejection),
}

/// Why an impression could not be considered at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// No campaign has this id.
    UnknownCampaign,
    /// The impression happened before the campaign's start time.
    NotStarted,
}

impl Rejection {
    /// A stable `snake_case` name, used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Rejection::UnknownCampaign => "unknown_campaign",
            Rejection::NotStarted => "not_started",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_in_bytes_and_kept_verbatim() {
        assert_eq!(UserId::parse(" u ").unwrap().as_str(), " u ");
        assert_eq!(
            AdId::parse(""),
            Err(ValidationError::Empty { field: "ad_id" })
        );
        assert!(UserId::parse("x".repeat(512)).is_ok());
        // 171 three-byte characters: 513 bytes.
        let err = UserId::parse("€".repeat(171)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user_id must be at most 512 bytes, got 513"
        );
    }
}
