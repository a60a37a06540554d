//! Campaigns: the unit everything is counted per.
//!
//! Every type here can only hold a valid value ("parse, don't validate"): a
//! [`CampaignName`] is trimmed and 1..=256 characters, a [`CampaignId`] is a
//! UUID. Campaigns are immutable once created, which is what lets every layer
//! above cache them freely.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::error::{ValidationError, excerpt};
use crate::time::Timestamp;

/// A campaign's identifier: a UUID chosen by the server when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CampaignId(Uuid);

impl CampaignId {
    /// Wraps an existing UUID.
    pub const fn from_uuid(id: Uuid) -> Self {
        CampaignId(id)
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The 16 bytes of the UUID, as hashed into dedup fingerprints.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl FromStr for CampaignId {
    type Err = ValidationError;

    /// Accepts any UUID text form (`Uuid::try_parse`): hyphenated, simple,
    /// braced or URN.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s)
            .map(CampaignId)
            .map_err(|_| ValidationError::NotAUuid {
                field: "campaign_id",
                value: excerpt(s),
            })
    }
}

impl fmt::Display for CampaignId {
    /// The hyphenated lower-case form, as returned by the API.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A campaign's human-readable name: trimmed, 1..=256 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CampaignName(String);

impl CampaignName {
    /// Longest name accepted, in characters (Unicode scalar values).
    pub const MAX_CHARS: usize = 256;

    /// Trims `raw` and checks its length.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        let chars = trimmed.chars().count();
        if chars == 0 {
            return Err(ValidationError::Empty { field: "name" });
        }
        if chars > Self::MAX_CHARS {
            return Err(ValidationError::TooLong {
                field: "name",
                max: Self::MAX_CHARS,
                unit: "characters",
                actual: chars,
            });
        }
        Ok(CampaignName(trimmed.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CampaignName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An advertising campaign. Impressions are counted only from `start_time` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    /// Server-chosen identifier.
    pub id: CampaignId,
    /// Display name.
    pub name: CampaignName,
    /// First moment at which impressions count.
    pub start_time: Timestamp,
}

impl Campaign {
    /// Whether an impression at `at` may be counted for this campaign.
    pub fn has_started(&self, at: Timestamp) -> bool {
        at >= self.start_time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_trimmed_and_bounded_in_characters_not_bytes() {
        assert_eq!(
            CampaignName::parse("  Summer sale ").unwrap().as_str(),
            "Summer sale"
        );
        assert_eq!(
            CampaignName::parse(" \t\n"),
            Err(ValidationError::Empty { field: "name" })
        );
        // 256 three-byte characters are 768 bytes but still a valid name.
        let max = "€".repeat(256);
        assert!(CampaignName::parse(&max).is_ok());
        let too_long = "a".repeat(257);
        assert!(matches!(
            CampaignName::parse(&too_long),
            Err(ValidationError::TooLong { actual: 257, .. })
        ));
    }

    #[test]
    fn campaign_id_round_trips_and_rejects_garbage() {
        let text = "b7da5a35-0974-4b7b-ab5d-576e9e628d80";
        let id: CampaignId = text.parse().unwrap();
        assert_eq!(id.to_string(), text);
        let err = "not-a-uuid".parse::<CampaignId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "campaign_id must be a UUID, got \"not-a-uuid\""
        );
    }

    #[test]
    fn campaign_starts_at_its_start_time_inclusive() {
        let c = Campaign {
            id: "b7da5a35-0974-4b7b-ab5d-576e9e628d80".parse().unwrap(),
            name: CampaignName::parse("c").unwrap(),
            start_time: Timestamp::from_secs(100),
        };
        assert!(!c.has_started(Timestamp::from_millis(99_999)));
        assert!(c.has_started(Timestamp::from_secs(100)));
    }
}
