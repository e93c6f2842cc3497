//! Values with rules, parsed once: a consumer group id, where a version starts reading, and the
//! hash that names an uploaded executable. Each has one `FromStr` and one serde form, used from
//! the CLI through the API to the registry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use squall_operators::StartFrom;
use squall_topologies::spec::KafkaSpec;

/// The conversions of a value kept as its checked text (a newtype over `String` with a
/// `FromStr`): from a `String` by that `FromStr` (serde's `try_from`), back into one (serde's
/// `into`), and `Display`.
macro_rules! text_value {
    ($t:ident) => {
        impl TryFrom<String> for $t {
            type Error = <$t as FromStr>::Err;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
    };
}

/// A Kafka consumer group id, which also names a deployment: 1..=255 characters, none of them a
/// control character.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupId(String);

/// Why a string is not a [`GroupId`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a group id has 1..=255 characters and no control characters")]
pub struct InvalidGroupId;

impl GroupId {
    /// The longest group id, in characters.
    pub const MAX_CHARS: usize = 255;

    /// The group id of a topology version: `<name>-v<version>`.
    pub fn of_spec(spec: &squall_topologies::TopologySpec) -> GroupId {
        // A spec's name is validated to [A-Za-z0-9_-]{1,64}, so this always satisfies the rules.
        GroupId(spec.group_id())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GroupId {
    type Err = InvalidGroupId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let chars = s.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS || s.chars().any(char::is_control) {
            return Err(InvalidGroupId);
        }
        Ok(GroupId(s.to_owned()))
    }
}

text_value!(GroupId);

impl std::borrow::Borrow<str> for GroupId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for GroupId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// Where a version without a checkpoint starts reading: `earliest`, `latest`, or `group:<group
/// id>` (the offsets that group committed; partitions it never committed start at the earliest).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StartPosition {
    /// The oldest retained offsets.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
    /// The offsets another group committed.
    Group(GroupId),
}

/// Why a string is not a [`StartPosition`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{given:?}: use earliest, latest or group:<group id>")]
pub struct InvalidStartPosition {
    /// What was given.
    pub given: String,
}

impl StartPosition {
    /// The group whose committed offsets this starts at, if any.
    pub fn group(&self) -> Option<&GroupId> {
        match self {
            StartPosition::Group(g) => Some(g),
            _ => None,
        }
    }

    /// Sets a topology's `[kafka]` start to this one (it replaces the file's).
    pub fn apply_to(&self, kafka: &mut KafkaSpec) {
        let (from, group) = match self {
            StartPosition::Earliest => (StartFrom::Earliest, None),
            StartPosition::Latest => (StartFrom::Latest, None),
            StartPosition::Group(g) => (StartFrom::Earliest, Some(g.to_string())),
        };
        kafka.start_from = from;
        kafka.start_from_group = group;
    }
}

impl FromStr for StartPosition {
    type Err = InvalidStartPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidStartPosition { given: s.to_owned() };
        match s {
            "earliest" => Ok(StartPosition::Earliest),
            "latest" => Ok(StartPosition::Latest),
            _ => {
                let group = s.strip_prefix("group:").ok_or_else(invalid)?;
                Ok(StartPosition::Group(group.parse().map_err(|_| invalid())?))
            }
        }
    }
}

impl TryFrom<String> for StartPosition {
    type Error = InvalidStartPosition;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<StartPosition> for String {
    fn from(p: StartPosition) -> String {
        p.to_string()
    }
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPosition::Earliest => f.pad("earliest"),
            StartPosition::Latest => f.pad("latest"),
            StartPosition::Group(g) => f.pad(&format!("group:{g}")),
        }
    }
}

/// The SHA-256 of an executable uploaded for versions to run, as 64 lowercase hex digits: its
/// name in the state directory, the registry and the API.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BinaryHash(String);

/// Why a string is not a [`BinaryHash`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{given:?}: a binary is named by the SHA-256 of its bytes, 64 hex digits")]
pub struct InvalidBinaryHash {
    /// What was given.
    pub given: String,
}

impl BinaryHash {
    /// The name of the bytes whose SHA-256 is `digest`.
    pub fn of_digest(digest: &[u8; 32]) -> BinaryHash {
        BinaryHash(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The hash as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BinaryHash {
    type Err = InvalidBinaryHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidBinaryHash { given: s.to_owned() });
        }
        Ok(BinaryHash(s.to_ascii_lowercase()))
    }
}

text_value!(BinaryHash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_hashes_are_64_hex_digits_in_lowercase() {
        let h: BinaryHash = "AB".repeat(32).parse().unwrap();
        assert_eq!(h.as_str(), "ab".repeat(32));
        assert_eq!(BinaryHash::of_digest(&[0xab; 32]), h);
        assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{}\"", "ab".repeat(32)));
        for bad in ["", "ab", &"g".repeat(64), &"a".repeat(65), "../../etc/passwd"] {
            let e = bad.parse::<BinaryHash>().unwrap_err();
            assert!(e.to_string().contains("64 hex digits"), "{e}");
        }
        assert!(serde_json::from_str::<BinaryHash>("\"ab\"").is_err());
    }

    #[test]
    fn group_ids_keep_their_rules() {
        assert_eq!("personalization-v2".parse::<GroupId>().unwrap().as_str(), "personalization-v2");
        assert!("".parse::<GroupId>().is_err());
        assert!("a\nb".parse::<GroupId>().is_err());
        assert!("é".repeat(255).parse::<GroupId>().is_ok(), "characters, not bytes");
        assert!("x".repeat(256).parse::<GroupId>().is_err());
        let json = serde_json::to_string(&GroupId("p-v1".into())).unwrap();
        assert_eq!(json, "\"p-v1\"");
        assert!(serde_json::from_str::<GroupId>("\"\"").is_err());
    }

    #[test]
    fn start_positions_round_trip_through_text_and_json() {
        for text in ["earliest", "latest", "group:personalization-v1"] {
            let p: StartPosition = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<StartPosition>(&format!("\"{text}\"")).unwrap(), p);
        }
        for bad in ["yesterday", "group:", "group:a\u{7}", "Earliest"] {
            let e = bad.parse::<StartPosition>().unwrap_err();
            assert!(e.to_string().contains("use earliest, latest or group:<group id>"), "{e}");
        }
    }

    #[test]
    fn a_start_position_replaces_the_files() {
        let mut kafka = KafkaSpec { start_from_group: Some("old-v1".into()), ..Default::default() };
        StartPosition::Latest.apply_to(&mut kafka);
        assert_eq!((kafka.start_from, kafka.start_from_group.as_deref()), (StartFrom::Latest, None));
        "group:p-v1".parse::<StartPosition>().unwrap().apply_to(&mut kafka);
        assert_eq!((kafka.start_from, kafka.start_from_group.as_deref()), (StartFrom::Earliest, Some("p-v1")));
    }
}
