//! Masking of personal data before telemetry leaves the process.
//!
//! Two lines of defence work together. Code never records contact data on purpose; this module
//! catches what slips through anyway. It masks
//!
//! * by key: an attribute whose key is listed (`customer.email`), or whose last dotted segment is a
//!   listed leaf (`email`, `phone`, ...), has its whole value replaced by [`MASK`];
//! * by value: any text matching a pattern (e-mail address, international phone number, payment
//!   card number that passes the Luhn check) has just the match replaced by `[masked:<kind>]`.
//!
//! The same [`Masker`] is applied to span names, attributes, event names and attributes, link
//! attributes and status descriptions (see [`MaskingExporter`]) and to every log line.
//! An OTel Collector in front of the backends can mask again, as a second line.
//!
//! What a key or a value is masked to depends on its contents and the masker's rules alone: the
//! same text is masked the same way whether it is a string literal, a formatted `String` or one
//! allocation shared by many spans, and whatever was masked before it. Nothing is decided or
//! remembered by where text lies in memory. Most values are short words, statuses and ids that
//! cannot hold any pattern, and a look at their bytes (see [`may_hold_contact_data`]) passes them
//! without a search; that look, not any knowledge of where a value came from, keeps masking
//! cheap.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use opentelemetry::{Key, KeyValue, StringValue, Value, trace::Status};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use regex::{Regex, RegexSet};

/// What a masked value is replaced with.
pub const MASK: &str = "[masked]";

/// Attribute keys masked whole by default.
pub const DEFAULT_KEYS: &[&str] = &[
    "customer.name",
    "customer.email",
    "customer.phone",
    "customer.address",
    "user.name",
    "user.full_name",
    "user.email",
    "http.request.header.authorization",
    "http.request.header.cookie",
    "http.response.header.set-cookie",
];

/// Last key segments masked whole by default, whatever their prefix.
pub const DEFAULT_LEAVES: &[&str] = &[
    "email",
    "phone",
    "phone_number",
    "address",
    "street",
    "full_name",
    "first_name",
    "last_name",
    "password",
    "authorization",
    "cookie",
];

/// A value pattern: what it is called in the mask and the expression that finds it.
#[derive(Clone)]
struct Pattern {
    kind: String,
    regex: Regex,
    /// Payment card numbers also have to pass the Luhn check, so order numbers and other long
    /// digit strings are left alone.
    luhn: bool,
}

/// Masks personal data in keys and values. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Masker {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Names,
    leaves: Names,
    patterns: Vec<Pattern>,
    /// All of `patterns` in one automaton: almost no text holds personal data, and one pass that
    /// finds nothing is much cheaper than one search per pattern.
    any: RegexSet,
    /// No patterns beyond the built-in ones: then text that [`may_hold_contact_data`] rules out
    /// needs no search at all.
    built_in_only: bool,
}

/// Lowercase names grouped by length: a lookup compares with the few names of its length, and
/// only when one of them starts with the same letter. Most keys of a span are none of these, and
/// most lookups end at that one test.
struct Names {
    by_length: Vec<Vec<String>>,
    /// For each length, a bit for the first letter of each name that long (see [`initial`]);
    /// names of 63 bytes or more share the last entry.
    initials: [u32; 64],
}

/// A bit for how `name` starts: its first letter whatever its case, or any other first byte, or
/// none at all.
fn initial(name: &str) -> u32 {
    // Setting bit 5 lowercases an ASCII letter and makes no other byte one.
    match name.as_bytes().first().map(|&byte| byte | 0x20) {
        Some(letter @ b'a'..=b'z') => 1 << (letter - b'a'),
        Some(_) => 1 << 30,
        None => 1 << 31,
    }
}

impl Names {
    fn new(names: Vec<String>) -> Self {
        let mut by_length: Vec<Vec<String>> = Vec::new();
        let mut initials = [0; 64];
        for name in names {
            if by_length.len() <= name.len() {
                by_length.resize_with(name.len() + 1, Vec::new);
            }
            initials[name.len().min(63)] |= initial(&name);
            by_length[name.len()].push(name);
        }
        Self {
            by_length,
            initials,
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.initials[name.len().min(63)] & initial(name) != 0
            && self
                .by_length
                .get(name.len())
                .is_some_and(|same| same.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }
}

impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.by_length.iter().flatten())
            .finish()
    }
}

/// What a byte is to the quick look ([`may_hold_contact_data`]): one of these bits, or none.
const DIGIT: u8 = 1;
const AT: u8 = 2;
const PLUS: u8 = 4;
const NON_ASCII: u8 = 8;

/// The class of every byte, so that the quick look asks one question of each byte, not four:
/// values are mostly a few bytes long, and asking each question over the whole slice in turn
/// costs more in setting up than in looking.
static BYTE_CLASS: [u8; 256] = {
    let mut classes = [0; 256];
    let mut byte = 0;
    while byte < classes.len() {
        classes[byte] = match byte as u8 {
            b'0'..=b'9' => DIGIT,
            b'@' => AT,
            b'+' => PLUS,
            0x80.. => NON_ASCII,
            _ => 0,
        };
        byte += 1;
    }
    classes
};

/// Whether `text` can match a built-in pattern at all, from what each one cannot do without:
/// an e-mail address has an `@`; a phone number at least three digits and a `+`, a `00` that
/// starts a word or a digit right after `(`; a card number thirteen digits with nothing but
/// spaces and dashes between them. Most attribute values (names, routes, statuses, ids,
/// summaries) have none of these, and this look at their bytes is far cheaper than a search:
/// one pass over the bytes answers the first questions (see [`BYTE_CLASS`]), and a second runs
/// only for text with three digits or more. The patterns' `\d` and `\s` are Unicode classes (a
/// phone number can be written in fullwidth or Arabic-Indic digits), so text that is not all
/// ASCII is searched.
fn may_hold_contact_data(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (mut digits, mut seen) = (0_u32, 0_u8);
    for &byte in bytes {
        let class = BYTE_CLASS[usize::from(byte)];
        seen |= class;
        digits += u32::from(class & DIGIT);
    }
    if seen & (NON_ASCII | AT) != 0 {
        return true;
    }
    if digits < 3 {
        return false;
    }
    if seen & PLUS != 0 {
        return true;
    }
    // Digits in the current stretch of digits, spaces and dashes.
    let mut run = 0;
    // The two bytes before this one; before the text they count as spaces, so that a `00` at
    // its start starts a word.
    let (mut before, mut previous) = (b' ', b' ');
    for &byte in bytes {
        match byte {
            b'0'..=b'9' => {
                // `\b00`: a `00` that does not continue a word (`0x00`, a hex id's `a00f` can't
                // start a phone number).
                let starts_00 = byte == b'0'
                    && previous == b'0'
                    && !(before.is_ascii_alphanumeric() || before == b'_');
                if previous == b'(' || starts_00 {
                    return true;
                }
                run += 1;
                if run >= 13 {
                    return true;
                }
            }
            b' ' | b'-' => {}
            _ => run = 0,
        }
        before = previous;
        previous = byte;
    }
    false
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("keys", &self.inner.keys)
            .field("leaves", &self.inner.leaves)
            .field(
                "patterns",
                &self
                    .inner
                    .patterns
                    .iter()
                    .map(|p| p.kind.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A masking rule that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid masking pattern `{pattern}`: {source}")]
pub struct MaskConfigError {
    pattern: String,
    #[source]
    source: regex::Error,
}

impl Default for Masker {
    fn default() -> Self {
        Self::new(&[], &[]).expect("the built-in patterns compile")
    }
}

impl Masker {
    /// The defaults plus `extra_keys` (exact keys, or `*.leaf` for a last segment) and
    /// `extra_patterns` (regular expressions, masked as `[masked:custom]`).
    pub fn new(extra_keys: &[String], extra_patterns: &[String]) -> Result<Self, MaskConfigError> {
        let mut keys: Vec<String> = DEFAULT_KEYS.iter().map(|k| k.to_string()).collect();
        let mut leaves: Vec<String> = DEFAULT_LEAVES.iter().map(|k| k.to_string()).collect();
        for key in extra_keys {
            let key = key.trim().to_ascii_lowercase();
            match key.strip_prefix("*.") {
                Some(leaf) => leaves.push(leaf.to_owned()),
                None if !key.is_empty() => keys.push(key),
                None => {}
            }
        }
        let compile = |kind: &str, pattern: &str, luhn| {
            Regex::new(pattern)
                .map(|regex| Pattern {
                    kind: kind.to_owned(),
                    regex,
                    luhn,
                })
                .map_err(|source| MaskConfigError {
                    pattern: pattern.to_owned(),
                    source,
                })
        };
        let mut patterns = vec![
            compile(
                "email",
                r"(?i)[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,}",
                false,
            )?,
            // International numbers (+49 170 1234567, 0049-170-...) and bracketed area codes.
            compile(
                "phone",
                r"(?:\+|\b00)\d{1,3}[\s\-./]?(?:\(\d{1,5}\)[\s\-./]?)?\d[\d\s\-./]{5,}\d|\(\d{2,5}\)\s?\d[\d\s\-]{4,}\d",
                false,
            )?,
            compile("card", r"\b(?:\d[ \-]?){12,18}\d\b", true)?,
        ];
        debug_assert_eq!(patterns.len(), BUILT_IN_PATTERNS);
        for pattern in extra_patterns {
            if !pattern.trim().is_empty() {
                patterns.push(compile("custom", pattern.trim(), false)?);
            }
        }
        let any = RegexSet::new(patterns.iter().map(|p| p.regex.as_str()))
            .expect("every pattern compiled on its own");
        Ok(Self {
            inner: Arc::new(Inner {
                keys: Names::new(keys),
                leaves: Names::new(leaves),
                built_in_only: patterns.len() == BUILT_IN_PATTERNS,
                patterns,
                any,
            }),
        })
    }

    /// Whether every value under `key` is personal data.
    pub fn is_sensitive_key(&self, key: &str) -> bool {
        // Keys are short and their last segment shorter: a byte loop from the end finds the dot
        // in a few steps, where `rsplit_once` sets up a word-wise search first.
        let leaf = match key.bytes().rposition(|b| b == b'.') {
            Some(dot) => &key[dot + 1..],
            None => key,
        };
        self.inner.keys.contains(key) || self.inner.leaves.contains(leaf)
    }

    /// Replaces every pattern match in `text`; borrows when nothing matched.
    ///
    /// Digits inside a UUID are never taken for a phone or card number: ids are what telemetry
    /// is correlated by (a UUIDv7 such as `019ad4f2-0012-7345-8123-456789abcdef` holds a run
    /// of digits and dashes that reads like a phone number), and a UUID is pseudonymous by
    /// construction. A match reaching beyond the UUID (an e-mail address with a UUID as its
    /// local part) is still masked.
    pub fn mask_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if is_uuid(text)
            || (self.inner.built_in_only && !may_hold_contact_data(text))
            || !self.inner.any.is_match(text)
        {
            return Cow::Borrowed(text);
        }
        let mut out = Cow::Borrowed(text);
        for pattern in &self.inner.patterns {
            if !pattern.regex.is_match(&out) {
                continue;
            }
            let uuids: Vec<std::ops::Range<usize>> =
                UUID.find_iter(&out).map(|m| m.range()).collect();
            let mut masked_any = false;
            let replaced = pattern
                .regex
                .replace_all(&out, |caps: &regex::Captures<'_>| {
                    let found = caps.get(0).expect("group 0 is the match");
                    let inside_uuid = uuids
                        .iter()
                        .any(|id| id.start <= found.start() && found.end() <= id.end);
                    if inside_uuid || (pattern.luhn && !passes_luhn(found.as_str())) {
                        found.as_str().to_owned()
                    } else {
                        masked_any = true;
                        format!("[masked:{}]", pattern.kind)
                    }
                })
                .into_owned();
            // Matches that were all left alone (inside ids, failing Luhn) change nothing: the
            // text stays borrowed, and the caller keeps the attribute as it is.
            if masked_any {
                out = Cow::Owned(replaced);
            }
        }
        out
    }

    /// The value to export for `key`: the mask for a sensitive key, the text with matches
    /// masked for a string, the value unchanged otherwise.
    pub fn mask_value(&self, key: &str, value: &Value) -> Option<Value> {
        if self.is_sensitive_key(key) {
            return Some(Value::from(MASK));
        }
        match value {
            Value::String(s) => match self.mask_text(s.as_str()) {
                Cow::Borrowed(_) => None,
                Cow::Owned(masked) => Some(Value::from(masked)),
            },
            Value::Array(opentelemetry::Array::String(items)) => {
                let masked: Vec<StringValue> = items
                    .iter()
                    .map(|s| StringValue::from(self.mask_text(s.as_str()).into_owned()))
                    .collect();
                (masked != *items).then(|| Value::Array(masked.into()))
            }
            _ => None,
        }
    }

    /// Masks a list of attributes in place.
    fn mask_attributes(&self, attributes: &mut [KeyValue]) {
        for kv in attributes.iter_mut() {
            if let Some(masked) = self.mask_value(kv.key.as_str(), &kv.value) {
                *kv = KeyValue::new(Key::from(kv.key.as_str().to_owned()), masked);
            }
        }
    }

    /// Masks everything a span carries that could hold personal data.
    pub fn mask_span(&self, span: &mut SpanData) {
        if let Cow::Owned(name) = self.mask_text(&span.name) {
            span.name = Cow::Owned(name);
        }
        self.mask_attributes(&mut span.attributes);
        for event in span.events.events.iter_mut() {
            if let Cow::Owned(name) = self.mask_text(&event.name) {
                event.name = Cow::Owned(name);
            }
            self.mask_attributes(&mut event.attributes);
        }
        for link in span.links.links.iter_mut() {
            self.mask_attributes(&mut link.attributes);
        }
        if let Status::Error { description } = &span.status
            && let Cow::Owned(masked) = self.mask_text(description)
        {
            span.status = Status::error(masked);
        }
    }
}

/// A UUID in its hyphenated form, anywhere in a text.
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
        .expect("the UUID pattern compiles")
});

/// The e-mail, phone and card patterns every masker has.
const BUILT_IN_PATTERNS: usize = 3;

/// Whether the whole of `text` is a hyphenated UUID (most attribute values are ids).
fn is_uuid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

fn passes_luhn(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A span exporter that masks every span before handing the batch to the real exporter.
#[derive(Debug)]
pub struct MaskingExporter<E> {
    masker: Masker,
    inner: E,
}

impl<E> MaskingExporter<E> {
    pub fn new(masker: Masker, inner: E) -> Self {
        Self { masker, inner }
    }
}

impl<E: SpanExporter> SpanExporter for MaskingExporter<E> {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        for span in &mut batch {
            self.masker.mask_span(span);
        }
        self.inner.export(batch).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_whose_digits_read_like_a_phone_number_are_left_alone() {
        let masker = Masker::default();
        // A UUIDv7 of the kind orders and messages get: "0012-7345-8123-456789" matches the
        // phone pattern on its own.
        let id = "019ad4f2-0012-7345-8123-456789abcdef";
        assert!(masker.inner.patterns[1].regex.is_match(id));
        assert_eq!(masker.mask_text(id), id);
        let line = format!("order {id} accepted");
        assert_eq!(masker.mask_text(&line), line);
        // Nothing masked, so nothing copied: the attribute is exported as it was made.
        let key = format!("models/{id}/ring.stl");
        assert!(masker.inner.patterns[1].regex.is_match(&key));
        assert!(matches!(masker.mask_text(&key), Cow::Borrowed(_)));
        assert_eq!(masker.mask_value("aws.s3.key", &Value::from(key)), None);
        assert_eq!(
            masker.mask_text(&format!("order {id}, call +49 170 1234567")),
            format!("order {id}, call [masked:phone]")
        );
        assert_eq!(
            masker.mask_text(&format!("{id}@example.com")),
            "[masked:email]"
        );
    }

    #[test]
    fn contact_keys_are_masked_whole() {
        let masker = Masker::default();
        for key in [
            "customer.email",
            "customer.name",
            "shipping.address",
            "x.phone",
        ] {
            assert_eq!(
                masker.mask_value(key, &Value::from("anything")),
                Some(Value::from(MASK)),
                "{key}"
            );
        }
        assert_eq!(masker.mask_value("order.id", &Value::from("abc")), None);
    }

    #[test]
    fn emails_phones_and_cards_in_free_text_are_masked() {
        let masker = Masker::default();
        let text =
            "mail jane.doe+ring@example.co.uk or call +49 170 1234567, card 4111 1111 1111 1111";
        let masked = masker.mask_text(text);
        assert_eq!(
            masked,
            "mail [masked:email] or call [masked:phone], card [masked:card]"
        );
    }

    #[test]
    fn the_quick_look_never_passes_over_text_a_built_in_pattern_matches() {
        let masker = Masker::default();
        // A mixed alphabet; one of little but digits and what joins them in phone numbers; one
        // of digits, card separators and a letter that breaks their runs.
        for (alphabet, longest) in [
            (&b"0123456789+()-. @ab.c/x"[..], 32),
            (&b"00123456789+(-  "[..], 40),
            (&b"0123456789123456789 -a"[..], 40),
            // `00` after word bytes and after others, as in names with hex suffixes.
            (&b"000123456789_f -+("[..], 40),
        ] {
            // A fixed linear congruential sequence: the same texts on every run.
            let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut matched = 0;
            for _ in 0..200_000 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let length = 1 + (state >> 32) as usize % longest;
                let text: String = (0..length)
                    .map(|i| {
                        let pick = (state >> (i % 8 * 7)) as usize ^ (i * 31);
                        alphabet[pick % alphabet.len()] as char
                    })
                    .collect();
                if masker.inner.any.is_match(&text) {
                    matched += 1;
                    assert!(may_hold_contact_data(&text), "{text:?}");
                }
            }
            assert!(
                matched > 1_000,
                "the texts exercise the patterns ({matched})"
            );
        }
        for shortest in [
            "+1 2     3",
            "001 2     3",
            "(12) 3 4 5 6",
            "4111 1111 1111 1111",
            "a@b.cd",
            // Digits beyond ASCII: fullwidth, Arabic-Indic, and a no-break space between them.
            "+４９ １７０ １２３４５６７",
            "+٤٩ ١٧٠ ١٢٣٤٥٦٧",
            "+49\u{a0}170\u{a0}1234567",
        ] {
            assert!(masker.inner.any.is_match(shortest), "{shortest}");
            assert!(may_hold_contact_data(shortest), "{shortest}");
        }
        assert_eq!(
            masker.mask_text("call +４９ １７０ １２３４５６７"),
            "call [masked:phone]"
        );
        // What the quick look is for: statements and ids with many digits but no phone marks.
        for plain in [
            "INSERT INTO shop.orders (id, status, total) VALUES ($1, $2, $3, $4, $5)",
            "order 2026-12-02 #12345",
            // A database or bucket name with a hex suffix: its `00`s are inside a word.
            "test_bench_shop_3f00a1c2e9d04b7f8e00aa55c3d2e1f0",
        ] {
            assert!(!may_hold_contact_data(plain), "{plain}");
        }
    }

    #[test]
    fn every_byte_is_classed_as_what_it_is() {
        for byte in 0..=u8::MAX {
            let class = BYTE_CLASS[usize::from(byte)];
            assert_eq!(class & DIGIT != 0, byte.is_ascii_digit(), "{byte:#04x}");
            assert_eq!(class & AT != 0, byte == b'@', "{byte:#04x}");
            assert_eq!(class & PLUS != 0, byte == b'+', "{byte:#04x}");
            assert_eq!(class & NON_ASCII != 0, !byte.is_ascii(), "{byte:#04x}");
        }
    }

    #[test]
    fn ids_dates_and_other_digit_strings_survive() {
        let masker = Masker::default();
        for text in [
            "0192f5d4-7a3e-7c1b-9d2e-5f6a7b8c9d0e",
            "PO-2026-000123",
            "2026-11-24T10:00:00Z",
            "1234567890123",
            "took 1500 ms",
        ] {
            assert_eq!(masker.mask_text(text), text);
        }
    }

    #[test]
    fn extra_keys_and_patterns_extend_the_defaults() {
        let masker =
            Masker::new(&["iban".into(), "*.passport".into()], &[r"DE\d{20}".into()]).unwrap();
        assert!(masker.is_sensitive_key("IBAN"));
        assert!(masker.is_sensitive_key("customer.passport"));
        assert_eq!(
            masker.mask_text("pay to DE89370400440532013000"),
            "pay to [masked:custom]"
        );
        assert!(Masker::new(&[], &["(".into()]).is_err());
    }

    #[test]
    fn keys_are_found_whatever_their_case_length_or_first_byte() {
        let long = format!("x.{}", "y".repeat(70));
        let masker = Masker::new(
            &[
                long.clone(),
                "*.2fa_code".into(),
                "*._token".into(),
                "*.".into(),
                "card.pan".into(),
            ],
            &[],
        )
        .unwrap();
        for key in [
            "Customer.EMAIL",
            "shipping.Street",
            "CARD.PAN",
            "user.2fa_code",
            "session._token",
            // `*.` lists the empty leaf: a key that ends in a dot, or is empty.
            "odd.",
            "",
            long.as_str(),
            &long.to_uppercase(),
        ] {
            assert!(masker.is_sensitive_key(key), "{key}");
        }
        let longer = format!("{long}y");
        for key in [
            // The same length and first letter as a listed name, or as a listed leaf.
            "customer.emaij",
            "shipping.stress",
            "card.pax",
            "user.2fa_cods",
            "session.-token",
            "odd",
            &long[..long.len() - 1],
            longer.as_str(),
            "db.system.name",
        ] {
            assert!(!masker.is_sensitive_key(key), "{key}");
        }
    }

    /// A span as the SDK hands it over, with the name, attributes and error status given.
    fn span_with(name: &str, attributes: Vec<KeyValue>, status: &str) -> SpanData {
        SpanData {
            span_context: opentelemetry::trace::SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: opentelemetry::trace::SpanKind::Internal,
            name: name.to_owned().into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::error(status.to_owned()),
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn a_whole_span_is_masked() {
        let masker = Masker::default();
        let mut span = span_with(
            "notify jane@example.com",
            vec![
                KeyValue::new("customer.phone", "+44 20 7946 0958".to_owned()),
                KeyValue::new("note", "from jane@example.com".to_owned()),
            ],
            "bounce for jane@example.com",
        );
        masker.mask_span(&mut span);
        assert_eq!(span.name, "notify [masked:email]");
        assert_eq!(span.attributes[0].value, Value::from(MASK));
        assert_eq!(span.attributes[1].value, Value::from("from [masked:email]"));
        assert_eq!(span.status, Status::error("bounce for [masked:email]"));
    }

    #[test]
    fn a_value_is_masked_the_same_whether_it_is_a_literal_or_made_at_run_time() {
        let masker = Masker::default();
        const LITERALS: &[&str] = &[
            "support@hallmark.example",
            "call +49 170 1234567",
            "card 4111 1111 1111 1111",
            "postgresql",
            "INSERT orders",
            "019ad4f2-0012-7345-8123-456789abcdef",
        ];
        for &literal in LITERALS {
            let owned = literal.to_owned();
            let leaked: &'static str = Box::leak(literal.to_owned().into_boxed_str());
            let shared = StringValue::from(Arc::<str>::from(literal));
            for key in ["note", "customer.email"] {
                let expected = masker.mask_value(key, &Value::from(literal));
                assert_eq!(
                    masker.mask_value(key, &Value::from(owned.clone())),
                    expected
                );
                assert_eq!(masker.mask_value(key, &Value::from(leaked)), expected);
                assert_eq!(
                    masker.mask_value(key, &Value::String(shared.clone())),
                    expected
                );
            }
            assert_eq!(masker.mask_text(literal), masker.mask_text(&owned));
        }
        // Span names and status descriptions too: a literal name is searched like any other.
        let mut from_literals = span_with("notify", Vec::new(), "");
        from_literals.name = Cow::Borrowed(LITERALS[0]);
        from_literals.status = Status::error(LITERALS[0]);
        from_literals.attributes = vec![KeyValue::new("note", LITERALS[0])];
        let mut made_at_run_time = span_with(
            LITERALS[0],
            vec![KeyValue::new("note", LITERALS[0].to_owned())],
            LITERALS[0],
        );
        masker.mask_span(&mut from_literals);
        masker.mask_span(&mut made_at_run_time);
        assert_eq!(from_literals.name, "[masked:email]");
        assert_eq!(from_literals.name, made_at_run_time.name);
        assert_eq!(from_literals.attributes, made_at_run_time.attributes);
        assert_eq!(from_literals.status, made_at_run_time.status);
    }

    #[test]
    fn a_key_is_sensitive_the_same_whether_it_is_a_literal_or_made_at_run_time() {
        let masker = Masker::new(&["*.iban".to_owned()], &[]).unwrap();
        for (key, sensitive) in [
            ("customer.email", true),
            ("payment.iban", true),
            ("order.id", false),
        ] {
            let (prefix, leaf) = key.split_once('.').unwrap();
            for _ in 0..2 {
                assert_eq!(masker.is_sensitive_key(key), sensitive, "{key}");
                assert_eq!(
                    masker.is_sensitive_key(&format!("{prefix}.{leaf}")),
                    sensitive,
                    "{key}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_batch_is_masked_as_each_of_its_spans_would_be_alone() {
        let masker = Masker::default();
        let collected = crate::test_support::Collected::default();
        let exporter = MaskingExporter::new(masker.clone(), collected.clone());
        // One allocation on several spans, as the order id and the database name are, and text
        // that repeats with and without personal data in it.
        let order = StringValue::from(Arc::<str>::from("019ad4f2-0012-7345-8123-456789abcdef"));
        let contact = StringValue::from(Arc::<str>::from("write to jane.doe@example.com today"));
        let spans: Vec<SpanData> = (0..3)
            .map(|i| {
                let attributes = vec![
                    KeyValue::new("order.id", order.clone()),
                    KeyValue::new("note", contact.clone()),
                    KeyValue::new("db.system.name", "postgresql"),
                    KeyValue::new("customer.email", format!("customer{i}@example.com")),
                ];
                span_with("notify", attributes, "")
            })
            .collect();
        for _ in 0..2 {
            exporter.export(spans.clone()).await.unwrap();
        }
        let exported = collected.spans();
        assert_eq!(exported.len(), 6);
        for (exported, original) in exported.iter().zip(spans.iter().cycle()) {
            let mut alone = original.clone();
            masker.mask_span(&mut alone);
            assert_eq!(exported.attributes, alone.attributes);
            assert_eq!(exported.name, alone.name);
        }
        assert_eq!(exported[5].attributes[0].value, Value::String(order));
        assert_eq!(
            exported[5].attributes[1].value,
            Value::from("write to [masked:email] today")
        );
        assert_eq!(exported[5].attributes[3].value, Value::from(MASK));
    }

    #[tokio::test]
    async fn the_exporter_masks_a_literal_sensitive_key_on_every_span_of_every_batch() {
        let collected = crate::test_support::Collected::default();
        let exporter = MaskingExporter::new(Masker::default(), collected.clone());
        for _ in 0..2 {
            let batch = (0..3)
                .map(|_| {
                    let mut span = span_with("notify", Vec::new(), "");
                    span.attributes = vec![
                        KeyValue::new("customer.phone", "+49 170 1234567"),
                        KeyValue::new("order.source", "web"),
                    ];
                    span
                })
                .collect();
            exporter.export(batch).await.unwrap();
        }
        let spans = collected.spans();
        assert_eq!(spans.len(), 6);
        for span in spans {
            assert_eq!(span.attributes[0].value, Value::from(MASK));
            assert_eq!(span.attributes[1].value, Value::from("web"));
        }
    }
}
