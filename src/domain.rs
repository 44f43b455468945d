//! Validated request types, and the region names that pool ids start with. Cognito's own limits (docs/api.md §2) are checked here, at the edge, so
//! that invalid input never reaches Cognito; every violation is collected, not just the first.

use std::{collections::HashMap, fmt, sync::LazyLock};

use regex::Regex;

/// Cognito's limits, from the `AdminResetUserPassword` reference page.
const POOL_ID_MAX_CHARS: usize = 55;
const USERNAME_MAX_CHARS: usize = 128;
const METADATA_VALUE_MAX_CHARS: usize = 131_072;
/// The gateway's own limit: Cognito documents no count, but a 4 MiB message of tiny entries
/// decodes into a map of over half a million, tens of megabytes per call. A thousand entries is far
/// beyond any Lambda trigger's needs.
const METADATA_MAX_ENTRIES: usize = 1_000;

/// `[\w-]+_[0-9a-zA-Z]+`, anchored. Cognito validates in Java, where `\w` is ASCII unless
/// `UNICODE_CHARACTER_CLASS` is set, so `\w` here is `[0-9A-Za-z_]` too.
static POOL_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[0-9A-Za-z_-]+_[0-9a-zA-Z]+$").expect("the pattern is a valid literal")
});

/// `[\p{L}\p{M}\p{S}\p{N}\p{P}]+`, anchored, Unicode-aware: letters, marks, symbols, numbers and
/// punctuation. Notably no whitespace and no control characters.
static USERNAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[\p{L}\p{M}\p{S}\p{N}\p{P}]+$").expect("the pattern is a valid literal")
});

/// A region name's shape (`us-east-1`, `us-gov-west-1`, `local-1`): lower-case words joined by
/// hyphens, ending in a number. Anything else in a pool id's prefix is not taken for a region.
static REGION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z]{2,}(-[a-z0-9]+)*-[0-9]{1,3}$").expect("the pattern is a valid literal")
});

/// One violated field, in the words of `google.rpc.BadRequest.FieldViolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The request field, as named in the proto (`user_pool_id`, `username`, `client_metadata`).
    pub field: &'static str,
    /// What is wrong, without echoing the value (it may be sensitive).
    pub description: String,
}

impl FieldViolation {
    fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
    }
}

/// A Cognito user pool id such as `us-east-1_AbCdEf123`: `<region>_<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserPoolId(String);

impl UserPoolId {
    /// Checks length (in Unicode scalar values) and pattern.
    pub fn parse(raw: String) -> Result<Self, FieldViolation> {
        let chars = raw.chars().count();
        if chars == 0 {
            return Err(FieldViolation::new("user_pool_id", "must not be empty"));
        }
        if chars > POOL_ID_MAX_CHARS {
            return Err(FieldViolation::new(
                "user_pool_id",
                format!("must be at most {POOL_ID_MAX_CHARS} characters, got {chars}"),
            ));
        }
        if !POOL_ID.is_match(&raw) {
            return Err(FieldViolation::new(
                "user_pool_id",
                r"must match [\w-]+_[0-9a-zA-Z]+ (for example us-east-1_AbCdEf123)",
            ));
        }
        Ok(Self(raw))
    }

    /// The pool id as sent to Cognito. Pool ids are not sensitive.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The region prefix: everything before the last `_`. The pattern guarantees there is one, and
    /// that it is not empty. Whether it names a region the gateway serves is the backend's call.
    pub fn region_prefix(&self) -> &str {
        let (prefix, _) = self
            .0
            .rsplit_once('_')
            .expect("parse() guarantees an '_' with text on both sides");
        prefix
    }
}

impl fmt::Display for UserPoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An AWS region name such as `us-east-1`: region-shaped, not necessarily one AWS runs (the local
/// Cognito's `local-1` is one too). Region names are not sensitive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Region(String);

/// A name that does not look like a region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a region name like us-east-1")]
pub struct NotARegion(pub String);

impl Region {
    /// Checks the shape: lower-case words joined by hyphens, ending in a number.
    pub fn parse(raw: String) -> Result<Self, NotARegion> {
        if REGION.is_match(&raw) {
            Ok(Self(raw))
        } else {
            Err(NotARegion(raw))
        }
    }

    /// The name, as the SDK and metrics take it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sets of regions are looked up by name (`set.contains("us-east-1")`); `Eq`, `Ord` and `Hash` are
/// the name's own, as `Borrow` requires.
impl std::borrow::Borrow<str> for Region {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<Region> for String {
    fn from(region: Region) -> Self {
        region.0
    }
}

/// A Cognito username (or alias). Sensitive: it has no `Display`, and its `Debug` redacts it, so it
/// cannot reach a log, a span or an error message by accident.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    /// Checks length (in Unicode scalar values) and pattern.
    pub fn parse(raw: String) -> Result<Self, FieldViolation> {
        let chars = raw.chars().count();
        if chars == 0 {
            return Err(FieldViolation::new("username", "must not be empty"));
        }
        if chars > USERNAME_MAX_CHARS {
            return Err(FieldViolation::new(
                "username",
                format!("must be at most {USERNAME_MAX_CHARS} characters, got {chars}"),
            ));
        }
        if !USERNAME.is_match(&raw) {
            return Err(FieldViolation::new(
                "username",
                r"must match [\p{L}\p{M}\p{S}\p{N}\p{P}]+ (no whitespace or control characters)",
            ));
        }
        Ok(Self(raw))
    }

    /// The name in clear, for the one place that needs it: the request to Cognito.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Username(<redacted>)")
    }
}

/// Key/value pairs for Cognito's Lambda triggers. Sensitive, like [`Username`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientMetadata(HashMap<String, String>);

impl ClientMetadata {
    /// Checks that keys are non-empty and values within Cognito's length limit. Reports every bad
    /// entry by position-free description: keys themselves may be sensitive, so they are not echoed.
    pub fn parse(raw: HashMap<String, String>) -> Result<Self, FieldViolation> {
        let empty_keys = raw.keys().filter(|k| k.is_empty()).count();
        let long_values = raw
            .values()
            .filter(|v| v.chars().count() > METADATA_VALUE_MAX_CHARS)
            .count();
        let mut problems = Vec::new();
        if raw.len() > METADATA_MAX_ENTRIES {
            problems.push(format!(
                "at most {METADATA_MAX_ENTRIES} entries, got {}",
                raw.len()
            ));
        }
        if empty_keys > 0 {
            problems.push("keys must not be empty".to_owned());
        }
        if long_values > 0 {
            problems.push(format!(
                "{long_values} value(s) longer than {METADATA_VALUE_MAX_CHARS} characters"
            ));
        }
        if problems.is_empty() {
            Ok(Self(raw))
        } else {
            Err(FieldViolation::new("client_metadata", problems.join("; ")))
        }
    }

    /// The pairs in clear, for the request to Cognito.
    pub fn expose(&self) -> &HashMap<String, String> {
        &self.0
    }

    /// Whether there are no pairs (Cognito then gets no `ClientMetadata` at all).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ClientMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientMetadata(<{} redacted entries>)", self.0.len())
    }
}

/// A caller's request id (AIP-155): a UUID it reuses when it retries the same request, so that
/// the retry is answered with the first call's outcome rather than sent again. Kept in its
/// canonical lower-case form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// `""` is no request id; anything else must be a UUID (`8-4-4-4-12` hex digits).
    pub fn parse(raw: String) -> Result<Option<Self>, FieldViolation> {
        if raw.is_empty() {
            return Ok(None);
        }
        let groups: Vec<&str> = raw.split('-').collect();
        let shaped = groups.len() == 5
            && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, len)| {
                group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit())
            });
        if !shaped {
            return Err(FieldViolation::new(
                "request_id",
                "must be a UUID (for example 123e4567-e89b-12d3-a456-426614174000), or empty",
            ));
        }
        Ok(Some(Self(raw.to_ascii_lowercase())))
    }

    /// The id in its canonical form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A fresh random (version 4) UUID: a request id for the `reset` client, `service.instance.id`.
pub fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    // Without the OS's randomness the id is all zeros: still valid, merely not unique.
    let _ = getrandom::fill(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A request that passed validation: the only kind the backend accepts.
#[derive(Debug, Clone)]
pub struct ResetRequest {
    /// Where the user lives.
    pub user_pool_id: UserPoolId,
    /// Whom to reset.
    pub username: Username,
    /// Passed through to Lambda triggers.
    pub client_metadata: ClientMetadata,
    /// The caller's id for this request, if it sent one.
    pub request_id: Option<RequestId>,
}

impl ResetRequest {
    /// Validates every field and returns every violation at once.
    pub fn parse(
        user_pool_id: String,
        username: String,
        client_metadata: HashMap<String, String>,
        request_id: String,
    ) -> Result<Self, Vec<FieldViolation>> {
        let pool = UserPoolId::parse(user_pool_id);
        let user = Username::parse(username);
        let metadata = ClientMetadata::parse(client_metadata);
        let request_id = RequestId::parse(request_id);
        match (pool, user, metadata, request_id) {
            (Ok(user_pool_id), Ok(username), Ok(client_metadata), Ok(request_id)) => Ok(Self {
                user_pool_id,
                username,
                client_metadata,
                request_id,
            }),
            (pool, user, metadata, request_id) => {
                Err([pool.err(), user.err(), metadata.err(), request_id.err()]
                    .into_iter()
                    .flatten()
                    .collect())
            }
        }
    }

    /// `text` without this request's username and metadata: for Cognito's messages, which may
    /// quote the request (validation errors echo values, Lambda errors say anything). Matches
    /// ignore ASCII case, as a case-insensitive pool might echo the name. Very short metadata keys
    /// and values are left: they would blank out ordinary words without protecting anything.
    /// Best effort by nature: a Lambda may say things about the user the request never named.
    ///
    /// One pass over `text`, every secret looked for at each place, the longest first: a mask is
    /// never scanned again, so a later secret cannot cut into an earlier mask and leave a piece
    /// of it that, with the text beside it, spells the name (found by fuzzing, see
    /// docs/fuzzing.md).
    pub fn scrub(&self, text: &str) -> String {
        let mut secrets = vec![(self.username.expose(), "<username>")];
        for (key, value) in self.client_metadata.expose() {
            for (secret, mask) in [(value, "<metadata>"), (key, "<metadata-key>")] {
                if secret.chars().count() >= 4 {
                    secrets.push((secret.as_str(), mask));
                }
            }
        }
        secrets.sort_by_key(|(secret, _)| std::cmp::Reverse(secret.len()));
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let (mut copied, mut at) = (0, 0);
        while at < bytes.len() {
            let found = secrets.iter().find(|(secret, _)| {
                bytes[at..]
                    .get(..secret.len())
                    .is_some_and(|here| here.eq_ignore_ascii_case(secret.as_bytes()))
            });
            match found {
                // Both are UTF-8 and ASCII case folding maps ASCII to ASCII, so a match starts and
                // ends on character boundaries.
                Some((secret, mask)) => {
                    out.push_str(&text[copied..at]);
                    out.push_str(mask);
                    at += secret.len();
                    copied = at;
                }
                None => at += 1,
            }
        }
        out.push_str(&text[copied..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_username_and_metadata_in_any_ascii_case() {
        let request = ResetRequest::parse(
            "us-east-1_Abc".into(),
            "Jane.Doe@example.com".into(),
            HashMap::from([
                ("tenant_name".into(), "Tenant-42".into()),
                ("short".into(), "ab".into()),
            ]),
            String::new(),
        )
        .unwrap();
        let text = "Value 'jane.doe@EXAMPLE.com' at 'username'; lambda said tenant-42 ab for TENANT_NAME; Jane.Doe@example.com";
        assert_eq!(
            request.scrub(text),
            "Value '<username>' at 'username'; lambda said <metadata> ab for <metadata-key>; <username>"
        );
        // Non-ASCII text around and inside the name survives the byte-wise matching.
        let request = ResetRequest::parse(
            "us-east-1_Abc".into(),
            "Zoë".into(),
            HashMap::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(
            request.scrub("é ZOË zoë Zoë ü"),
            "é ZOË <username> <username> ü"
        );
    }

    /// Found by the `request` fuzz target's check (fuzz/): each secret was replaced in turn, so a
    /// metadata value could cut into the `<username>` mask and leave, with the text beside it, the
    /// name itself.
    #[test]
    fn scrub_never_cuts_into_its_own_masks() {
        let request = ResetRequest::parse(
            "us-east-1_Abc".into(),
            "rname>".into(),
            HashMap::from([("k".into(), "<use".into())]),
            String::new(),
        )
        .unwrap();
        assert_eq!(request.scrub("x rname> y"), "x <username> y");
        // An ordinary metadata key no longer mangles the mask either.
        let request = ResetRequest::parse(
            "us-east-1_Abc".into(),
            "jane".into(),
            HashMap::from([("name".into(), "value".into())]),
            String::new(),
        )
        .unwrap();
        assert_eq!(request.scrub("JANE's name"), "<username>'s <metadata-key>");
    }

    fn pool(s: &str) -> Result<UserPoolId, FieldViolation> {
        UserPoolId::parse(s.to_owned())
    }
    fn user(s: &str) -> Result<Username, FieldViolation> {
        Username::parse(s.to_owned())
    }

    #[test]
    fn pool_ids_follow_cognitos_pattern() {
        for ok in [
            "us-east-1_AbCdEf123",
            "eu-west-2_x",
            "local-1_DemoPool",
            "a_b",
            "a__b",
        ] {
            assert!(pool(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "us-east-1",
            "us-east-1_",
            "_abc",
            "us-east-1_abc-def",
            "üs-east-1_abc",
            "us east-1_a",
            "us-east-1_ab\n",
        ] {
            assert_eq!(
                pool(bad).map_err(|v| v.field),
                Err("user_pool_id"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pool_id_length_counts_characters() {
        let at_limit = format!("r_{}", "a".repeat(53));
        assert!(pool(&at_limit).is_ok());
        let over = format!("r_{}", "a".repeat(54));
        assert!(pool(&over).unwrap_err().description.contains("at most 55"));
    }

    #[test]
    fn region_prefix_is_before_the_last_underscore() {
        assert_eq!(pool("us-east-1_Abc").unwrap().region_prefix(), "us-east-1");
        assert_eq!(pool("a_b_c").unwrap().region_prefix(), "a_b");
    }

    #[test]
    fn region_shapes() {
        for ok in [
            "us-east-1",
            "us-gov-west-1",
            "ap-southeast-5",
            "local-1",
            "eu-central-2",
        ] {
            assert_eq!(Region::parse(ok.to_owned()).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "us",
            "us-east",
            "US-EAST-1",
            "us_east_1",
            "a-1",
            "x-",
            "us-east-1-",
        ] {
            assert_eq!(
                Region::parse(bad.to_owned()),
                Err(NotARegion(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn usernames_accept_unicode_letters_symbols_and_punctuation() {
        for ok in [
            "alice",
            "zoë",
            "用户",
            "a+b@example.com",
            "ÅngströM-ß",
            "😀",
            "e\u{301}",
        ] {
            assert!(user(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn usernames_refuse_whitespace_controls_and_empty() {
        for bad in ["", "a b", "tab\t", "nul\0", "line\n", "\u{200b}zero-width"] {
            assert_eq!(user(bad).map_err(|v| v.field), Err("username"), "{bad:?}");
        }
    }

    #[test]
    fn username_length_counts_unicode_scalars_not_bytes() {
        // 128 four-byte characters: 512 bytes, but within Cognito's 128-character limit.
        assert!(user(&"😀".repeat(128)).is_ok());
        assert!(user(&"😀".repeat(129)).is_err());
    }

    #[test]
    fn username_debug_never_shows_the_name() {
        let name = user("secret-person").unwrap();
        assert!(!format!("{name:?}").contains("secret"));
        let request = ResetRequest::parse(
            "us-east-1_Abc".into(),
            "secret-person".into(),
            HashMap::from([("k".into(), "secret-value".into())]),
            String::new(),
        )
        .unwrap();
        let printed = format!("{request:?}");
        assert!(!printed.contains("secret"), "{printed}");
    }

    #[test]
    fn client_metadata_limits() {
        let ok = HashMap::from([("k".to_owned(), "v".repeat(METADATA_VALUE_MAX_CHARS))]);
        assert!(ClientMetadata::parse(ok).is_ok());
        let long = HashMap::from([("k".to_owned(), "v".repeat(METADATA_VALUE_MAX_CHARS + 1))]);
        assert!(ClientMetadata::parse(long).is_err());
        let many: HashMap<_, _> = (0..=METADATA_MAX_ENTRIES)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert!(
            ClientMetadata::parse(many)
                .unwrap_err()
                .description
                .contains("at most 1000 entries")
        );
        let enough: HashMap<_, _> = (0..METADATA_MAX_ENTRIES)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert!(ClientMetadata::parse(enough).is_ok());
        let empty_key = HashMap::from([(String::new(), "v".to_owned())]);
        assert!(
            ClientMetadata::parse(empty_key)
                .unwrap_err()
                .description
                .contains("keys")
        );
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let violations = ResetRequest::parse(
            String::new(),
            "a b".into(),
            HashMap::from([(String::new(), String::new())]),
            "not-a-uuid".into(),
        )
        .unwrap_err();
        let fields: Vec<_> = violations.iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            ["user_pool_id", "username", "client_metadata", "request_id"]
        );
    }

    #[test]
    fn random_uuids_are_request_ids() {
        let (a, b) = (random_uuid(), random_uuid());
        assert_ne!(a, b);
        assert!(RequestId::parse(a).unwrap().is_some());
    }

    #[test]
    fn request_ids_are_uuids_or_nothing() {
        assert_eq!(RequestId::parse(String::new()), Ok(None));
        let id = RequestId::parse("123E4567-E89B-12D3-A456-426614174000".into())
            .unwrap()
            .unwrap();
        assert_eq!(id.as_str(), "123e4567-e89b-12d3-a456-426614174000");
        for bad in [
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456-42661417400",
            "123e4567-e89b-12d3-a456-4266141740000",
            "{123e4567-e89b-12d3-a456-426614174000}",
            "123e4567-e89b-12d3-a456-42661417400g",
            "retry-1",
        ] {
            assert_eq!(
                RequestId::parse(bad.into()).unwrap_err().field,
                "request_id",
                "{bad}"
            );
        }
    }
}
