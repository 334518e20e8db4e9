//! Masking rules order-watch applies to the spans it stores, on top of what the services mask
//! themselves before exporting (`otel_fastpath::mask`): a second line a developer can move at
//! run time (`PATCH /api/config`, `masking`) when a service turns out to send something it
//! should not.
//!
//! * `drop_keys`: attributes with these keys are not stored at all;
//! * `mask_keys`: attributes with these keys are stored with the value [`MASK`];
//! * `mask_patterns`: in every other text value (nested ones too) and in the span's status
//!   message, each match of these regular expressions is replaced by [`MASK`].
//!
//! Keys are matched exactly (after ingest's cleaning: at most 256 characters). The keys
//! order-watch itself reads to follow a journey ([`READ_KEYS`]) can be neither dropped nor
//! masked, and patterns leave their values alone: masking them would break the journey instead
//! of hiding anything personal. Patterns are [`regex`] expressions, which run in time linear in
//! the text whatever the pattern, and are bounded in number, length and compiled size.

use std::collections::BTreeSet;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use telemetry::attr;

pub use otel_fastpath::mask::MASK;

/// Most keys in `drop_keys` and in `mask_keys`, each.
pub const MAX_KEYS: usize = 200;
/// Longest key (ingest cuts keys at this length).
pub const MAX_KEY_CHARS: usize = 256;
/// Most patterns.
pub const MAX_PATTERNS: usize = 50;
/// Longest pattern, in characters.
pub const MAX_PATTERN_CHARS: usize = 500;
/// Largest compiled pattern: a pattern that expands beyond this (`\w{1000}{1000}`) is refused.
const MAX_COMPILED_BYTES: usize = 256 * 1024;

/// The attribute keys order-watch reads from spans (a journey's status and activity, retries,
/// dead letters, the metrics' labels and measurements): never masked.
pub const READ_KEYS: [&str; 8] = [
    attr::ORDER_STATUS_TO,
    attr::ORDER_ACTIVITY,
    attr::RETRY_COUNT,
    attr::DLQ_ROUTE,
    attr::ORDER_MATERIAL,
    attr::MESSAGE_TYPE,
    attr::QUEUE_WAIT_MS,
    "messaging.destination.subscription.name",
];

/// The rules as they are written, stored and shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingRules {
    /// Attribute keys whose attributes are not stored.
    #[serde(default)]
    pub drop_keys: BTreeSet<String>,
    /// Attribute keys whose values are stored as [`MASK`].
    #[serde(default)]
    pub mask_keys: BTreeSet<String>,
    /// Regular expressions whose matches in text values are stored as [`MASK`].
    #[serde(default)]
    pub mask_patterns: Vec<String>,
}

/// Why rules were refused, naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "masking: expected an object with drop_keys, mask_keys and mask_patterns (lists of strings): {0}"
    )]
    Shape(String),
    #[error("masking.{list}: at most {max} entries")]
    TooMany { list: &'static str, max: usize },
    #[error("masking.{list}: a key is 1 to {MAX_KEY_CHARS} characters, not {key:?}")]
    BadKey { list: &'static str, key: String },
    #[error(
        "masking.{list}: order-watch reads `{key}` to follow journeys; it cannot be dropped or masked"
    )]
    ReadKey { list: &'static str, key: String },
    #[error("masking.mask_patterns[{index}]: a pattern is 1 to {MAX_PATTERN_CHARS} characters")]
    PatternLength { index: usize },
    #[error("masking.mask_patterns[{index}]: `{pattern}` is not a regular expression: {reason}")]
    Pattern {
        index: usize,
        pattern: String,
        reason: String,
    },
}

impl MaskingRules {
    /// The rules a JSON value describes, checked.
    pub fn from_json(value: &Value) -> Result<Self, RuleError> {
        let rules: Self =
            serde_json::from_value(value.clone()).map_err(|e| RuleError::Shape(e.to_string()))?;
        rules.compile()?;
        Ok(rules)
    }

    /// Whether there is any rule.
    pub fn is_empty(&self) -> bool {
        self.drop_keys.is_empty() && self.mask_keys.is_empty() && self.mask_patterns.is_empty()
    }

    /// The rules ready to apply, or what is wrong with them.
    pub fn compile(&self) -> Result<Masking, RuleError> {
        for (list, keys) in [
            ("drop_keys", &self.drop_keys),
            ("mask_keys", &self.mask_keys),
        ] {
            if keys.len() > MAX_KEYS {
                return Err(RuleError::TooMany {
                    list,
                    max: MAX_KEYS,
                });
            }
            for key in keys {
                if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || key.contains('\0') {
                    return Err(RuleError::BadKey {
                        list,
                        key: key.chars().take(40).collect(),
                    });
                }
                if READ_KEYS.contains(&key.as_str()) {
                    return Err(RuleError::ReadKey {
                        list,
                        key: key.clone(),
                    });
                }
            }
        }
        if self.mask_patterns.len() > MAX_PATTERNS {
            return Err(RuleError::TooMany {
                list: "mask_patterns",
                max: MAX_PATTERNS,
            });
        }
        let patterns = self
            .mask_patterns
            .iter()
            .enumerate()
            .map(|(index, pattern)| {
                if pattern.is_empty() || pattern.chars().count() > MAX_PATTERN_CHARS {
                    return Err(RuleError::PatternLength { index });
                }
                RegexBuilder::new(pattern)
                    .size_limit(MAX_COMPILED_BYTES)
                    .build()
                    .map_err(|err| RuleError::Pattern {
                        index,
                        pattern: pattern.clone(),
                        reason: match err {
                            regex::Error::CompiledTooBig(_) => {
                                "it expands to more than order-watch allows; make it simpler"
                                    .to_owned()
                            }
                            // The syntax error's own text points at the spot, over lines.
                            other => other.to_string().lines().last().unwrap_or("").to_owned(),
                        },
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Masking {
            rules: self.clone(),
            patterns,
        })
    }
}

/// Rules compiled, applied to each span at ingest.
#[derive(Debug, Clone, Default)]
pub struct Masking {
    rules: MaskingRules,
    patterns: Vec<Regex>,
}

impl Masking {
    pub fn rules(&self) -> &MaskingRules {
        &self.rules
    }

    /// Whether there is nothing to do (the common case: ingest then does nothing).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies the rules to a span's attributes.
    pub fn attributes(&self, attributes: &mut Map<String, Value>) {
        if self.is_empty() {
            return;
        }
        attributes.retain(|key, _| !self.rules.drop_keys.contains(key));
        for (key, value) in attributes.iter_mut() {
            if READ_KEYS.contains(&key.as_str()) {
                continue;
            }
            if self.rules.mask_keys.contains(key) {
                *value = Value::from(MASK);
            } else if !self.patterns.is_empty() {
                self.value(value);
            }
        }
    }

    /// Applies the patterns to a text (a status message).
    pub fn text(&self, text: &mut String) {
        for pattern in &self.patterns {
            if let std::borrow::Cow::Owned(masked) = pattern.replace_all(text, MASK) {
                *text = masked;
            }
        }
    }

    fn value(&self, value: &mut Value) {
        match value {
            Value::String(text) => self.text(text),
            Value::Array(items) => items.iter_mut().for_each(|item| self.value(item)),
            Value::Object(fields) => fields.values_mut().for_each(|field| self.value(field)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules(value: Value) -> Result<Masking, RuleError> {
        MaskingRules::from_json(&value)?.compile()
    }

    #[test]
    fn keys_are_dropped_or_masked_and_patterns_mask_matches_in_every_text_value() {
        let masking = rules(json!({
            "drop_keys": ["http.request.header.x-api-key"],
            "mask_keys": ["customer.vat_id"],
            "mask_patterns": ["DE[0-9]{9}"],
        }))
        .unwrap();
        let mut attributes = json!({
            "http.request.header.x-api-key": "k-123",
            "customer.vat_id": "DE123456789",
            "note": "invoice to DE987654321, thanks",
            "nested": { "list": ["DE111111111", 7] },
            "count": 3,
            "order.status.to": "priced",
        })
        .as_object()
        .cloned()
        .unwrap();
        masking.attributes(&mut attributes);
        assert_eq!(
            Value::Object(attributes),
            json!({
                "customer.vat_id": MASK,
                "note": format!("invoice to {MASK}, thanks"),
                "nested": { "list": [MASK, 7] },
                "count": 3,
                "order.status.to": "priced",
            })
        );
        let mut message = "refused DE222222222".to_owned();
        masking.text(&mut message);
        assert_eq!(message, format!("refused {MASK}"));
    }

    #[test]
    fn patterns_never_touch_the_keys_order_watch_reads() {
        let masking = rules(json!({ "mask_patterns": ["pric"] })).unwrap();
        let mut attributes = json!({ "order.status.to": "pricing", "other": "pricing" })
            .as_object()
            .cloned()
            .unwrap();
        masking.attributes(&mut attributes);
        assert_eq!(attributes["order.status.to"], "pricing");
        assert_eq!(attributes["other"], format!("{MASK}ing"));
    }

    #[test]
    fn a_bad_pattern_an_oversized_list_or_a_key_order_watch_reads_is_refused_naming_the_rule() {
        let err = rules(json!({ "mask_patterns": ["ok", "(unclosed"] })).unwrap_err();
        assert!(
            matches!(&err, RuleError::Pattern { index: 1, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("masking.mask_patterns[1]: `(unclosed` is not a regular expression"),
            "{err}"
        );
        let err = rules(json!({ "mask_patterns": ["\\w{1000}{1000}"] })).unwrap_err();
        assert!(err.to_string().contains("make it simpler"), "{err}");
        let many: Vec<String> = (0..=MAX_KEYS).map(|i| format!("k{i}")).collect();
        assert_eq!(
            rules(json!({ "drop_keys": many })).unwrap_err(),
            RuleError::TooMany {
                list: "drop_keys",
                max: MAX_KEYS
            }
        );
        assert_eq!(
            rules(json!({ "mask_keys": ["order.activity"] })).unwrap_err(),
            RuleError::ReadKey {
                list: "mask_keys",
                key: "order.activity".into()
            }
        );
        assert!(matches!(
            rules(json!({ "mask_keys": [""] })).unwrap_err(),
            RuleError::BadKey { .. }
        ));
        assert!(matches!(
            rules(json!({ "mask_keys": "customer.vat_id" })).unwrap_err(),
            RuleError::Shape(_)
        ));
        assert!(matches!(
            rules(json!({ "hide": [] })).unwrap_err(),
            RuleError::Shape(_)
        ));
        assert_eq!(
            rules(json!({ "mask_patterns": [""] })).unwrap_err(),
            RuleError::PatternLength { index: 0 }
        );
    }

    #[test]
    fn no_rules_change_nothing() {
        let masking = Masking::default();
        assert!(masking.is_empty());
        let mut attributes = json!({ "a": "b" }).as_object().cloned().unwrap();
        masking.attributes(&mut attributes);
        assert_eq!(attributes["a"], "b");
    }
}
