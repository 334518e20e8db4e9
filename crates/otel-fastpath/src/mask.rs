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
//! Text compiled into the program is not searched for patterns in spans (keys are still
//! checked): a string literal such as `"postgresql"`, `"INSERT orders"` or a status name is part
//! of the executable, so it cannot hold a customer's data, which only ever arrives at run time.
//! Most span values are such literals, so this saves most of the searching (see
//! [`is_compiled_in`]).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
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

/// Lowercase names grouped by length: a lookup compares with the few names of its length.
struct Names(Vec<Vec<String>>);

impl Names {
    fn new(names: Vec<String>) -> Self {
        let mut by_length: Vec<Vec<String>> = Vec::new();
        for name in names {
            if by_length.len() <= name.len() {
                by_length.resize_with(name.len() + 1, Vec::new);
            }
            by_length[name.len()].push(name);
        }
        Self(by_length)
    }

    fn contains(&self, name: &str) -> bool {
        self.0
            .get(name.len())
            .is_some_and(|same| same.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }
}

impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().flatten()).finish()
    }
}

/// Whether `text` can match a built-in pattern at all, from what each one cannot do without:
/// an e-mail address has an `@`; a phone number at least three digits and a `+`, a `00` that
/// starts a word or a digit right after `(`; a card number thirteen digits with nothing but
/// spaces and dashes between them. Most attribute values (names, routes, statuses, ids,
/// summaries) have none of these, and this look at their bytes is far cheaper than a search:
/// the first checks are whole-slice operations the compiler vectorizes, and the loop runs only
/// for text with three digits or more. The patterns' `\d` and `\s` are Unicode classes (a phone number can be
/// written in fullwidth or Arabic-Indic digits), so text that is not all ASCII is searched.
fn may_hold_contact_data(text: &str) -> bool {
    let bytes = text.as_bytes();
    if !bytes.is_ascii() || bytes.contains(&b'@') {
        return true;
    }
    if bytes.iter().filter(|b| b.is_ascii_digit()).count() < 3 {
        return false;
    }
    if bytes.contains(&b'+') {
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

    /// Reads `HALLMARK_MASK_KEYS` (comma-separated) and `HALLMARK_MASK_PATTERNS`
    /// (regular expressions separated by `;;`) on top of the defaults.
    pub fn from_env() -> Result<Self, MaskConfigError> {
        let keys: Vec<String> = std::env::var("HALLMARK_MASK_KEYS")
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect();
        let patterns: Vec<String> = std::env::var("HALLMARK_MASK_PATTERNS")
            .unwrap_or_default()
            .split(";;")
            .map(str::to_owned)
            .collect();
        Self::new(&keys, &patterns)
    }

    /// Whether every value under `key` is personal data.
    pub fn is_sensitive_key(&self, key: &str) -> bool {
        let leaf = key.rsplit_once('.').map_or(key, |(_, leaf)| leaf);
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

    /// [`Masker::mask_text`] for text made at run time; text compiled into the program (see
    /// [`is_compiled_in`]) is borrowed as it is.
    fn mask_run_time_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if is_compiled_in(text) {
            return Cow::Borrowed(text);
        }
        self.mask_text(text)
    }

    /// The value to export for `key`: the mask for a sensitive key, the text with matches
    /// masked for a string, the value unchanged otherwise.
    pub fn mask_value(&self, key: &str, value: &Value) -> Option<Value> {
        self.mask_value_with(key, value, &mut Seen::default())
    }

    fn mask_value_with(&self, key: &str, value: &Value, seen: &mut Seen) -> Option<Value> {
        if seen.is_sensitive(self, key) {
            return Some(Value::from(MASK));
        }
        match value {
            Value::String(s) => match seen.mask_shared(self, s.as_str()) {
                Cow::Borrowed(_) => None,
                Cow::Owned(masked) => Some(Value::from(masked)),
            },
            Value::Array(opentelemetry::Array::String(items)) => {
                let masked: Vec<StringValue> = items
                    .iter()
                    .map(|s| StringValue::from(self.mask_run_time_text(s.as_str()).into_owned()))
                    .collect();
                (masked != *items).then(|| Value::Array(masked.into()))
            }
            _ => None,
        }
    }

    /// Masks a list of attributes in place.
    fn mask_attributes(&self, attributes: &mut [KeyValue], seen: &mut Seen) {
        for kv in attributes.iter_mut() {
            if let Some(masked) = self.mask_value_with(kv.key.as_str(), &kv.value, seen) {
                *kv = KeyValue::new(Key::from(kv.key.as_str().to_owned()), masked);
            }
        }
    }

    /// Masks everything a span carries that could hold personal data.
    pub fn mask_span(&self, span: &mut SpanData) {
        self.mask_span_with(span, &mut Seen::default());
    }

    /// [`Masker::mask_span`], with what `seen` remembers of earlier spans.
    fn mask_span_with(&self, span: &mut SpanData, seen: &mut Seen) {
        if let Cow::Owned(name) = self.mask_run_time_text(&span.name) {
            span.name = Cow::Owned(name);
        }
        self.mask_attributes(&mut span.attributes, seen);
        for event in span.events.events.iter_mut() {
            if let Cow::Owned(name) = self.mask_run_time_text(&event.name) {
                event.name = Cow::Owned(name);
            }
            self.mask_attributes(&mut event.attributes, seen);
        }
        for link in span.links.links.iter_mut() {
            self.mask_attributes(&mut link.attributes, seen);
        }
        if let Status::Error { description } = &span.status
            && let Cow::Owned(masked) = self.mask_run_time_text(description)
        {
            span.status = Status::error(masked);
        }
    }
}

/// What masking remembers from span to span, by address, so that what comes over and over is
/// not worked out again. Answers belong to the [`Masker`] that gave them: keep one `Seen` per
/// masker.
///
/// * Whether a key compiled into the program is sensitive. Spans carry the same few dozen
///   literal keys (`db.system.name`, `order.id`), and a literal's address holds the same text
///   for the life of the process. Keys made at run time are always worked out. Only addresses
///   in the program's image are kept, so the map cannot outgrow the program's literals.
/// * Which values of the current batch were found clean. One allocation is shared by many
///   spans: the order id on every span of an order, the database name on every database span.
///   Within a batch, such text stays where it is, unchanged: spans are only read, and a value
///   found clean is never replaced, so its allocation lives as long as the batch does. Hence
///   [`Seen::end_batch`] forgets them. Short text is checked again instead, which costs less
///   than remembering it.
#[derive(Debug, Default)]
struct Seen {
    keys: rustc_hash::FxHashMap<(usize, usize), bool>,
    clean: rustc_hash::FxHashSet<(usize, usize)>,
}

/// Values at least this long are remembered when clean (a UUID has 36 bytes).
const REMEMBERED_LEN: usize = 24;

impl Seen {
    fn is_sensitive(&mut self, masker: &Masker, key: &str) -> bool {
        if !is_compiled_in(key) {
            return masker.is_sensitive_key(key);
        }
        *self
            .keys
            .entry((key.as_ptr() as usize, key.len()))
            .or_insert_with(|| masker.is_sensitive_key(key))
    }

    /// [`Masker::mask_run_time_text`] for an attribute value, remembering clean ones.
    fn mask_shared<'a>(&mut self, masker: &Masker, text: &'a str) -> Cow<'a, str> {
        if text.len() < REMEMBERED_LEN {
            return masker.mask_run_time_text(text);
        }
        let at = (text.as_ptr() as usize, text.len());
        if self.clean.contains(&at) {
            return Cow::Borrowed(text);
        }
        let masked = masker.mask_run_time_text(text);
        if matches!(masked, Cow::Borrowed(_)) {
            self.clean.insert(at);
        }
        masked
    }

    /// Forgets the values of the batch just masked: their allocations may be freed now.
    fn end_batch(&mut self) {
        self.clean.clear();
    }
}

/// The address ranges of this executable's read-only segments (code and constants), read from
/// `/proc/self/maps` once; empty where there is no such file, and then nothing counts as
/// compiled in.
static IMAGE: LazyLock<Vec<Range<usize>>> = LazyLock::new(|| {
    let exe = std::fs::read_link("/proc/self/exe");
    let maps = std::fs::read_to_string("/proc/self/maps");
    match (exe, maps) {
        (Ok(exe), Ok(maps)) => read_only_segments(&maps, &exe.to_string_lossy()),
        _ => Vec::new(),
    }
});

/// The read-only mappings of the file `path` in `maps` (the format of `/proc/<pid>/maps`:
/// `start-end perms offset dev inode path`).
fn read_only_segments(maps: &str, path: &str) -> Vec<Range<usize>> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let (range, perms) = (fields.next()?, fields.next()?);
            let mapped = fields.nth(3)?.trim_start();
            if mapped != path || perms.as_bytes().get(1) != Some(&b'-') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            Some(start..end)
        })
        .collect()
}

/// Whether `text` lies in the program's read-only image: a string literal, a `&'static str`
/// constant. Such text was written by a developer, not received from a customer. Text on the
/// heap (everything formatted, parsed, read from a request, a row or a message) never is, and
/// neither is anything in writable memory, so a false "yes" is impossible; where the image is
/// unknown, the answer is "no" and the text is searched as before.
fn is_compiled_in(text: &str) -> bool {
    let start = text.as_ptr() as usize;
    let end = start + text.len();
    IMAGE
        .iter()
        .any(|segment| segment.start <= start && end <= segment.end)
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
    /// What masking remembers across spans. Batches are exported one at a time, so the lock is
    /// never contended.
    seen: Mutex<Seen>,
    inner: E,
}

impl<E> MaskingExporter<E> {
    pub fn new(masker: Masker, inner: E) -> Self {
        Self {
            masker,
            seen: Mutex::default(),
            inner,
        }
    }
}

impl<E: SpanExporter> SpanExporter for MaskingExporter<E> {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            for span in &mut batch {
                self.masker.mask_span_with(span, &mut seen);
            }
            seen.end_batch();
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

    /// A span as the SDK hands it over, with everything in it made at run time, as data from a
    /// customer is.
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
    fn text_compiled_into_the_program_is_not_searched_but_its_keys_are_checked() {
        let masker = Masker::default();
        const LITERAL: &str = "support@hallmark.example";
        assert!(is_compiled_in(LITERAL));
        let at_run_time = LITERAL.to_owned();
        assert!(!is_compiled_in(&at_run_time));
        let mut span = span_with("notify", Vec::new(), "");
        span.name = Cow::Borrowed(LITERAL);
        span.attributes = vec![
            KeyValue::new("note", LITERAL),
            KeyValue::new("note", at_run_time.clone()),
            KeyValue::new("customer.email", LITERAL),
        ];
        masker.mask_span(&mut span);
        assert_eq!(span.name, LITERAL);
        assert_eq!(span.attributes[0].value, Value::from(LITERAL));
        assert_eq!(span.attributes[1].value, Value::from("[masked:email]"));
        assert_eq!(span.attributes[2].value, Value::from(MASK));
        // Text in writable memory is not part of the image, whatever its lifetime.
        let leaked: &'static str = Box::leak(at_run_time.into_boxed_str());
        assert!(!is_compiled_in(leaked));
    }

    #[test]
    fn literal_keys_are_remembered_and_keys_made_at_run_time_are_checked_each_time() {
        let masker = Masker::new(&["*.iban".to_owned()], &[]).unwrap();
        let mut seen = Seen::default();
        for _ in 0..2 {
            assert!(seen.is_sensitive(&masker, "customer.email"));
            assert!(seen.is_sensitive(&masker, "payment.iban"));
            assert!(!seen.is_sensitive(&masker, "order.id"));
        }
        assert_eq!(seen.keys.len(), 3);
        // A key built at run time is answered from its text, and not remembered: its address
        // could hold another key later.
        let built = format!("customer.{}", "email");
        assert!(seen.is_sensitive(&masker, &built));
        assert!(!seen.is_sensitive(&masker, &format!("order.{}", "id")));
        assert_eq!(seen.keys.len(), 3);
    }

    #[test]
    fn a_value_shared_by_the_spans_of_a_batch_is_searched_once_and_forgotten_after_it() {
        let masker = Masker::default();
        let mut seen = Seen::default();
        let order = StringValue::from(Arc::<str>::from("019ad4f2-0012-7345-8123-456789abcdef"));
        let contact = StringValue::from(Arc::<str>::from("write to jane.doe@example.com today"));
        let mut spans: Vec<SpanData> = (0..3)
            .map(|_| {
                let attributes = vec![
                    KeyValue::new("order.id", order.clone()),
                    KeyValue::new("note", contact.clone()),
                ];
                span_with("notify", attributes, "")
            })
            .collect();
        for span in &mut spans {
            masker.mask_span_with(span, &mut seen);
        }
        // Only the clean value is remembered; the other is masked on every span.
        assert_eq!(seen.clean.len(), 1);
        for span in &spans {
            assert_eq!(span.attributes[0].value, Value::String(order.clone()));
            assert_eq!(
                span.attributes[1].value,
                Value::from("write to [masked:email] today")
            );
        }
        seen.end_batch();
        assert!(seen.clean.is_empty());
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

    #[test]
    fn only_read_only_mappings_of_the_executable_count_as_its_image() {
        let maps = "\
55d0c0a00000-55d0c0a4e000 r--p 00000000 fd:01 1234 /srv/shop api\n\
55d0c0a4e000-55d0c0f00000 r-xp 0004e000 fd:01 1234 /srv/shop api\n\
55d0c1000000-55d0c1010000 rw-p 00500000 fd:01 1234 /srv/shop api\n\
7f0000000000-7f0000100000 r--p 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 \n\
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n";
        assert_eq!(
            read_only_segments(maps, "/srv/shop api"),
            vec![
                0x55d0c0a00000..0x55d0c0a4e000,
                0x55d0c0a4e000..0x55d0c0f00000
            ]
        );
        assert!(read_only_segments(maps, "/srv/other").is_empty());
    }
}
