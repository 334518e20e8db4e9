//! OTLP protobuf encoding of spans straight from the SDK's `SpanData`.
//!
//! Produces the same bytes as `opentelemetry_proto`'s
//! `group_spans_by_resource_and_scope` followed by `prost::Message::encode_to_vec`, without
//! building the intermediate message tree (a `String` per attribute key and value, a `Vec` per
//! id, ...). Encoding takes two passes over the data: the length of every message is computed
//! first (protobuf prefixes each nested message with its length), then the bytes are written
//! into a single buffer reserved to the exact total.
//!
//! Field numbers refer to `opentelemetry/proto/{collector/trace,trace,resource,common}/v1/*.proto`.
//! Proto3 rules apply as prost applies them: scalar fields holding their default value (0, empty
//! string or bytes) are omitted, `optional` message fields that upstream always sets (resource,
//! scope, status, key-value value) are always written, and a `oneof` member is written even
//! when it holds a default value.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use prost::encoding::{WireType, encoded_len_varint, key_len};

/// The OTLP `ExportTraceServiceRequest` for `spans` of `resource`, as protobuf bytes.
pub fn export_request(resource: &Resource, spans: &[SpanData]) -> Vec<u8> {
    let scopes = group_by_scope(spans);
    // ExportTraceServiceRequest: 1 resource_spans (exactly one, as upstream, even when empty).
    let resource_spans_len = resource_spans_len(resource, &scopes);
    let total_len = message_field_len(1, resource_spans_len);
    let mut buf = Vec::with_capacity(total_len);
    write_message_header(&mut buf, 1, resource_spans_len);
    write_resource_spans(&mut buf, resource, &scopes);
    debug_assert_eq!(buf.len(), total_len, "computed lengths match written bytes");
    buf
}

// ---------------------------------------------------------------------------------------------
// Grouping
// ---------------------------------------------------------------------------------------------

/// The spans of one instrumentation scope, in the form they are written.
struct ScopeGroup<'a> {
    scope: &'a InstrumentationScope,
    spans: Vec<Measured<'a>>,
}

/// A span with what both passes need: its start and end in Unix nanoseconds (converted once,
/// not in each pass) and the length of its encoded `Span` message.
struct Measured<'a> {
    span: &'a SpanData,
    start: u64,
    end: u64,
    len: usize,
}

impl<'a> Measured<'a> {
    fn new(span: &'a SpanData) -> Self {
        let (start, end) = (to_nanos(span.start_time), to_nanos(span.end_time));
        Self {
            span,
            start,
            end,
            len: span_len(span, start, end),
        }
    }
}

/// Groups spans by equal instrumentation scope, groups in order of first appearance and spans in
/// input order, as upstream does; each group encodes the scope of its first span.
fn group_by_scope(spans: &[SpanData]) -> Vec<ScopeGroup<'_>> {
    let mut groups: Vec<ScopeGroup<'_>> = Vec::new();
    let mut last = 0;
    for span in spans {
        let scope = &span.instrumentation_scope;
        // Consecutive spans usually share a scope: try the last group first.
        let index = if groups
            .get(last)
            .is_some_and(|group| same_scope(group.scope, scope))
        {
            last
        } else if let Some(index) = groups
            .iter()
            .position(|group| same_scope(group.scope, scope))
        {
            index
        } else {
            groups.push(ScopeGroup {
                scope,
                spans: Vec::new(),
            });
            groups.len() - 1
        };
        groups[index].spans.push(Measured::new(span));
        last = index;
    }
    groups
}

/// `a == b`, skipping the two sorting allocations of `InstrumentationScope::eq` when the
/// attributes are in the same order (which implies them equal once sorted).
fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    if a.attributes().eq(b.attributes()) {
        a.name() == b.name() && a.version() == b.version() && a.schema_url() == b.schema_url()
    } else {
        a == b
    }
}

// ---------------------------------------------------------------------------------------------
// ResourceSpans, Resource, ScopeSpans, InstrumentationScope
// ---------------------------------------------------------------------------------------------

/// `ResourceSpans`: 1 resource, 2 scope_spans, 3 schema_url.
fn resource_spans_len(resource: &Resource, scopes: &[ScopeGroup<'_>]) -> usize {
    message_field_len(1, resource_len(resource))
        + scopes
            .iter()
            .map(|group| message_field_len(2, scope_spans_len(group)))
            .sum::<usize>()
        + string_field_len(3, resource.schema_url().unwrap_or_default())
}

fn write_resource_spans(buf: &mut Vec<u8>, resource: &Resource, scopes: &[ScopeGroup<'_>]) {
    write_message_header(buf, 1, resource_len(resource));
    write_resource(buf, resource);
    for group in scopes {
        write_message_header(buf, 2, scope_spans_len(group));
        write_scope_spans(buf, group);
    }
    write_string_field(buf, 3, resource.schema_url().unwrap_or_default());
}

/// `Resource`: 1 attributes (2 dropped_attributes_count and 3 entity_refs are always empty).
fn resource_len(resource: &Resource) -> usize {
    attributes_len(1, resource.iter())
}

fn write_resource(buf: &mut Vec<u8>, resource: &Resource) {
    write_attributes(buf, 1, resource.iter());
}

/// `ScopeSpans`: 1 scope, 2 spans, 3 schema_url.
fn scope_spans_len(group: &ScopeGroup<'_>) -> usize {
    message_field_len(1, scope_len(group.scope))
        + group
            .spans
            .iter()
            .map(|measured| message_field_len(2, measured.len))
            .sum::<usize>()
        + string_field_len(3, group.scope.schema_url().unwrap_or_default())
}

fn write_scope_spans(buf: &mut Vec<u8>, group: &ScopeGroup<'_>) {
    write_message_header(buf, 1, scope_len(group.scope));
    write_scope(buf, group.scope);
    for measured in &group.spans {
        write_message_header(buf, 2, measured.len);
        write_span(buf, measured);
    }
    write_string_field(buf, 3, group.scope.schema_url().unwrap_or_default());
}

/// `InstrumentationScope`: 1 name, 2 version, 3 attributes (4 dropped_attributes_count is 0).
fn scope_len(scope: &InstrumentationScope) -> usize {
    string_field_len(1, scope.name())
        + string_field_len(2, scope.version().unwrap_or_default())
        + attributes_len(3, key_values(scope.attributes()))
}

fn write_scope(buf: &mut Vec<u8>, scope: &InstrumentationScope) {
    write_string_field(buf, 1, scope.name());
    write_string_field(buf, 2, scope.version().unwrap_or_default());
    write_attributes(buf, 3, key_values(scope.attributes()));
}

// ---------------------------------------------------------------------------------------------
// Span, Event, Link, Status
// ---------------------------------------------------------------------------------------------

/// `Span`: 1 trace_id, 2 span_id, 3 trace_state, 4 parent_span_id, 5 name, 6 kind,
/// 7 start_time_unix_nano, 8 end_time_unix_nano, 9 attributes, 10 dropped_attributes_count,
/// 11 events, 12 dropped_events_count, 13 links, 14 dropped_links_count, 15 status, 16 flags.
/// `start` and `end` are the span's times in Unix nanoseconds.
fn span_len(span: &SpanData, start: u64, end: u64) -> usize {
    let context = &span.span_context;
    bytes_field_len(1, &context.trace_id().to_bytes())
        + bytes_field_len(2, &context.span_id().to_bytes())
        + string_field_len_with(3, trace_state_len(context.trace_state()))
        + parent_span_id(span).map_or(0, |id| bytes_field_len(4, &id))
        + string_field_len(5, &span.name)
        + varint_field_len(6, span_kind_number(&span.span_kind))
        + fixed64_field_len(7, start)
        + fixed64_field_len(8, end)
        + attributes_len(9, key_values(&span.attributes))
        + varint_field_len(10, span.dropped_attributes_count.into())
        + span
            .events
            .iter()
            .map(|event| message_field_len(11, event_len(event)))
            .sum::<usize>()
        + varint_field_len(12, span.events.dropped_count.into())
        + span
            .links
            .iter()
            .map(|link| message_field_len(13, link_len(link)))
            .sum::<usize>()
        + varint_field_len(14, span.links.dropped_count.into())
        + message_field_len(15, status_len(&span.status))
        + fixed32_field_len(
            16,
            span_flags(span.parent_span_is_remote, context.trace_flags()),
        )
}

fn write_span(buf: &mut Vec<u8>, measured: &Measured<'_>) {
    let span = measured.span;
    let context = &span.span_context;
    write_bytes_field(buf, 1, &context.trace_id().to_bytes());
    write_bytes_field(buf, 2, &context.span_id().to_bytes());
    write_trace_state_field(buf, 3, context.trace_state());
    if let Some(id) = parent_span_id(span) {
        write_bytes_field(buf, 4, &id);
    }
    write_string_field(buf, 5, &span.name);
    write_varint_field(buf, 6, span_kind_number(&span.span_kind));
    write_fixed64_field(buf, 7, measured.start);
    write_fixed64_field(buf, 8, measured.end);
    write_attributes(buf, 9, key_values(&span.attributes));
    write_varint_field(buf, 10, span.dropped_attributes_count.into());
    for event in span.events.iter() {
        write_message_header(buf, 11, event_len(event));
        write_event(buf, event);
    }
    write_varint_field(buf, 12, span.events.dropped_count.into());
    for link in span.links.iter() {
        write_message_header(buf, 13, link_len(link));
        write_link(buf, link);
    }
    write_varint_field(buf, 14, span.links.dropped_count.into());
    write_message_header(buf, 15, status_len(&span.status));
    write_status(buf, &span.status);
    write_fixed32_field(
        buf,
        16,
        span_flags(span.parent_span_is_remote, context.trace_flags()),
    );
}

/// The parent span id, or none (an omitted field) when the span has no parent, as upstream.
fn parent_span_id(span: &SpanData) -> Option<[u8; 8]> {
    (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_bytes())
}

/// `Span.SpanKind` enum numbers.
fn span_kind_number(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// `SpanFlags` as upstream builds them: the W3C trace flags in the low byte, plus
/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` (0x100) always and
/// `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK` (0x200) when the parent (or linked) context is remote.
fn span_flags(is_remote: bool, trace_flags: TraceFlags) -> u32 {
    let remote = if is_remote { 0x200 } else { 0 };
    u32::from(trace_flags.to_u8()) | 0x100 | remote
}

/// `Span.Event`: 1 time_unix_nano, 2 name, 3 attributes, 4 dropped_attributes_count.
fn event_len(event: &Event) -> usize {
    fixed64_field_len(1, to_nanos(event.timestamp))
        + string_field_len(2, &event.name)
        + attributes_len(3, key_values(&event.attributes))
        + varint_field_len(4, event.dropped_attributes_count.into())
}

fn write_event(buf: &mut Vec<u8>, event: &Event) {
    write_fixed64_field(buf, 1, to_nanos(event.timestamp));
    write_string_field(buf, 2, &event.name);
    write_attributes(buf, 3, key_values(&event.attributes));
    write_varint_field(buf, 4, event.dropped_attributes_count.into());
}

/// `Span.Link`: 1 trace_id, 2 span_id, 3 trace_state, 4 attributes,
/// 5 dropped_attributes_count, 6 flags.
fn link_len(link: &Link) -> usize {
    let context: &SpanContext = &link.span_context;
    bytes_field_len(1, &context.trace_id().to_bytes())
        + bytes_field_len(2, &context.span_id().to_bytes())
        + string_field_len_with(3, trace_state_len(context.trace_state()))
        + attributes_len(4, key_values(&link.attributes))
        + varint_field_len(5, link.dropped_attributes_count.into())
        + fixed32_field_len(6, span_flags(context.is_remote(), context.trace_flags()))
}

fn write_link(buf: &mut Vec<u8>, link: &Link) {
    let context: &SpanContext = &link.span_context;
    write_bytes_field(buf, 1, &context.trace_id().to_bytes());
    write_bytes_field(buf, 2, &context.span_id().to_bytes());
    write_trace_state_field(buf, 3, context.trace_state());
    write_attributes(buf, 4, key_values(&link.attributes));
    write_varint_field(buf, 5, link.dropped_attributes_count.into());
    write_fixed32_field(
        buf,
        6,
        span_flags(context.is_remote(), context.trace_flags()),
    );
}

/// `Status`: 2 message (only for errors), 3 code (`STATUS_CODE_UNSET` 0, `OK` 1, `ERROR` 2).
fn status_len(status: &Status) -> usize {
    let (code, message) = status_parts(status);
    string_field_len(2, message) + varint_field_len(3, code)
}

fn write_status(buf: &mut Vec<u8>, status: &Status) {
    let (code, message) = status_parts(status);
    write_string_field(buf, 2, message);
    write_varint_field(buf, 3, code);
}

fn status_parts(status: &Status) -> (u64, &str) {
    match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description),
    }
}

// ---------------------------------------------------------------------------------------------
// TraceState: the W3C header `key1=value1,key2=value2`, written without building the String.
// ---------------------------------------------------------------------------------------------

/// Length of `trace_state.header()`.
fn trace_state_len(trace_state: &TraceState) -> usize {
    let entries = trace_state.into_iter();
    let separators = entries.len().saturating_sub(1);
    entries
        .map(|(key, value)| key.len() + 1 + value.len())
        .sum::<usize>()
        + separators
}

/// Writes `trace_state.header()` as string field `tag`, unless empty.
fn write_trace_state_field(buf: &mut Vec<u8>, tag: u32, trace_state: &TraceState) {
    let len = trace_state_len(trace_state);
    if len == 0 {
        return;
    }
    write_message_header(buf, tag, len);
    for (index, (key, value)) in trace_state.into_iter().enumerate() {
        if index > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(key.as_bytes());
        buf.push(b'=');
        buf.extend_from_slice(value.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// KeyValue, AnyValue, ArrayValue
// ---------------------------------------------------------------------------------------------

/// A `KeyValue` slice as the (key, value) pairs that resources iterate over.
fn key_values<'a>(
    attributes: impl IntoIterator<Item = &'a KeyValue>,
) -> impl Iterator<Item = (&'a Key, &'a Value)> {
    attributes.into_iter().map(|kv| (&kv.key, &kv.value))
}

/// Repeated `KeyValue` field `tag`.
fn attributes_len<'a>(tag: u32, attributes: impl Iterator<Item = (&'a Key, &'a Value)>) -> usize {
    attributes
        .map(|(key, value)| message_field_len(tag, key_value_len(key, value)))
        .sum()
}

fn write_attributes<'a>(
    buf: &mut Vec<u8>,
    tag: u32,
    attributes: impl Iterator<Item = (&'a Key, &'a Value)>,
) {
    for (key, value) in attributes {
        write_message_header(buf, tag, key_value_len(key, value));
        write_key_value(buf, key, value);
    }
}

/// `KeyValue`: 1 key, 2 value (always set; 3 key_strindex is 0).
fn key_value_len(key: &Key, value: &Value) -> usize {
    string_field_len(1, key.as_str())
        + message_field_len(2, any_value_len(AnyValueRef::from(value)))
}

fn write_key_value(buf: &mut Vec<u8>, key: &Key, value: &Value) {
    write_string_field(buf, 1, key.as_str());
    let value = AnyValueRef::from(value);
    write_message_header(buf, 2, any_value_len(value));
    write_any_value(buf, value);
}

/// The member of the `AnyValue.value` oneof that an attribute value becomes.
#[derive(Clone, Copy)]
enum AnyValueRef<'a> {
    /// 1 string_value
    String(&'a str),
    /// 2 bool_value
    Bool(bool),
    /// 3 int_value
    Int(i64),
    /// 4 double_value
    Double(f64),
    /// 5 array_value
    Array(&'a Array),
    /// No member set: for value kinds added to `opentelemetry` after 0.33 (upstream panics).
    None,
}

impl<'a> From<&'a Value> for AnyValueRef<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::String(s) => Self::String(s.as_str()),
            Value::Bool(b) => Self::Bool(*b),
            Value::I64(i) => Self::Int(*i),
            Value::F64(f) => Self::Double(*f),
            Value::Array(array) => Self::Array(array),
            _ => Self::None,
        }
    }
}

/// `AnyValue`: the oneof member, written even when it holds a default value.
fn any_value_len(value: AnyValueRef<'_>) -> usize {
    match value {
        AnyValueRef::String(s) => message_field_len(1, s.len()),
        AnyValueRef::Bool(_) => key_len(2) + 1,
        AnyValueRef::Int(i) => key_len(3) + encoded_len_varint(i as u64),
        AnyValueRef::Double(_) => key_len(4) + 8,
        AnyValueRef::Array(array) => message_field_len(5, array_value_len(array)),
        AnyValueRef::None => 0,
    }
}

fn write_any_value(buf: &mut Vec<u8>, value: AnyValueRef<'_>) {
    match value {
        AnyValueRef::String(s) => {
            write_message_header(buf, 1, s.len());
            buf.extend_from_slice(s.as_bytes());
        }
        AnyValueRef::Bool(b) => {
            put_key(buf, 2, WireType::Varint);
            put_varint(buf, u64::from(b));
        }
        AnyValueRef::Int(i) => {
            put_key(buf, 3, WireType::Varint);
            put_varint(buf, i as u64);
        }
        AnyValueRef::Double(f) => {
            put_key(buf, 4, WireType::SixtyFourBit);
            buf.extend_from_slice(&f.to_le_bytes());
        }
        AnyValueRef::Array(array) => {
            write_message_header(buf, 5, array_value_len(array));
            write_array_value(buf, array);
        }
        AnyValueRef::None => {}
    }
}

/// `ArrayValue`: 1 values (repeated `AnyValue`).
fn array_value_len(array: &Array) -> usize {
    array_elements(array, 0, |len, element| {
        len + message_field_len(1, any_value_len(element))
    })
}

fn write_array_value(buf: &mut Vec<u8>, array: &Array) {
    array_elements(array, buf, |buf, element| {
        write_message_header(buf, 1, any_value_len(element));
        write_any_value(buf, element);
        buf
    });
}

/// Folds over the elements of `array` as `AnyValue`s. Array kinds added to `opentelemetry`
/// after 0.33 have no elements (upstream panics).
fn array_elements<T>(array: &Array, init: T, f: impl FnMut(T, AnyValueRef<'_>) -> T) -> T {
    match array {
        Array::Bool(values) => values.iter().map(|&b| AnyValueRef::Bool(b)).fold(init, f),
        Array::I64(values) => values.iter().map(|&i| AnyValueRef::Int(i)).fold(init, f),
        Array::F64(values) => values.iter().map(|&d| AnyValueRef::Double(d)).fold(init, f),
        Array::String(values) => values
            .iter()
            .map(|s| AnyValueRef::String(s.as_str()))
            .fold(init, f),
        _ => init,
    }
}

// ---------------------------------------------------------------------------------------------
// Wire format primitives
// ---------------------------------------------------------------------------------------------

/// Unix nanoseconds as upstream converts them: 0 before the epoch, truncated to 64 bits.
fn to_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// Writes `value` as a varint. prost's `encode_varint` is a call per field; almost every tag
/// and length here is a single byte, which this writes inline.
#[inline]
fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push(value as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Writes the key of field `tag` (its number and wire type), as prost's `encode_key`.
#[inline]
fn put_key(buf: &mut Vec<u8>, tag: u32, wire_type: WireType) {
    put_varint(buf, u64::from(tag << 3 | wire_type as u32));
}

/// A length-delimited field (message, string or bytes) whose payload is `len` bytes long.
fn message_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn write_message_header(buf: &mut Vec<u8>, tag: u32, len: usize) {
    put_key(buf, tag, WireType::LengthDelimited);
    put_varint(buf, len as u64);
}

/// A proto3 string field of `len` bytes: omitted when empty.
fn string_field_len_with(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        message_field_len(tag, len)
    }
}

fn string_field_len(tag: u32, value: &str) -> usize {
    string_field_len_with(tag, value.len())
}

fn write_string_field(buf: &mut Vec<u8>, tag: u32, value: &str) {
    write_bytes_field(buf, tag, value.as_bytes());
}

/// A proto3 bytes field: omitted when empty.
fn bytes_field_len(tag: u32, value: &[u8]) -> usize {
    string_field_len_with(tag, value.len())
}

fn write_bytes_field(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    if !value.is_empty() {
        write_message_header(buf, tag, value.len());
        buf.extend_from_slice(value);
    }
}

/// A proto3 varint field (uint32, int32 enum): omitted when 0.
fn varint_field_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

fn write_varint_field(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        put_key(buf, tag, WireType::Varint);
        put_varint(buf, value);
    }
}

/// A proto3 fixed64 field: omitted when 0.
fn fixed64_field_len(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + 8 }
}

fn write_fixed64_field(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        put_key(buf, tag, WireType::SixtyFourBit);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

/// A proto3 fixed32 field: omitted when 0.
fn fixed32_field_len(tag: u32, value: u32) -> usize {
    if value == 0 { 0 } else { key_len(tag) + 4 }
}

fn write_fixed32_field(buf: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        put_key(buf, tag, WireType::ThirtyTwoBit);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use opentelemetry::trace::{
        Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::{span, status};
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message;

    use super::export_request;

    /// The request as the upstream exporter builds it.
    fn upstream_request(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(resource),
            ),
        }
    }

    fn decode(bytes: &[u8]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(bytes).expect("valid OTLP protobuf")
    }

    /// Upstream groups scopes through a `HashMap`: compare scope groups in a fixed order.
    fn sort_scopes(request: &mut ExportTraceServiceRequest) {
        for resource_spans in &mut request.resource_spans {
            resource_spans.scope_spans.sort_by(|a, b| {
                let key = |s: &opentelemetry_proto::tonic::trace::v1::ScopeSpans| {
                    s.scope
                        .as_ref()
                        .map(|scope| (scope.name.clone(), scope.version.clone()))
                };
                key(a).cmp(&key(b))
            });
        }
    }

    fn at(nanos: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(nanos)
    }

    fn context(
        trace_id: u128,
        span_id: u64,
        sampled: bool,
        remote: bool,
        trace_state: &[(&str, &str)],
    ) -> SpanContext {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::NOT_SAMPLED
        };
        let trace_state = TraceState::from_key_value(trace_state.iter().copied()).unwrap();
        SpanContext::new(
            TraceId::from(trace_id),
            SpanId::from(span_id),
            flags,
            remote,
            trace_state,
        )
    }

    fn span(name: &'static str, span_id: u64, scope: &InstrumentationScope) -> SpanData {
        SpanData {
            span_context: context(
                0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
                span_id,
                true,
                false,
                &[],
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(name),
            start_time: at(1_700_000_000_123_456_789),
            end_time: at(1_700_000_000_223_456_789),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// Every `Value` kind, including every array kind, empty and unicode strings, negative
    /// and extreme integers, and awkward floats.
    fn all_values() -> Vec<KeyValue> {
        vec![
            KeyValue::new("string", "value"),
            KeyValue::new("empty.string", ""),
            KeyValue::new("unicode", "héllo wörld ✓ 日本語 🦀"),
            KeyValue::new("", "empty key"),
            KeyValue::new("bool.true", true),
            KeyValue::new("bool.false", false),
            KeyValue::new("int.zero", 0_i64),
            KeyValue::new("int.negative", -42_i64),
            KeyValue::new("int.min", i64::MIN),
            KeyValue::new("int.max", i64::MAX),
            KeyValue::new("double.half", 0.5),
            KeyValue::new("double.negative.zero", -0.0),
            KeyValue::new("double.zero", 0.0),
            KeyValue::new("double.big", -1.5e300),
            KeyValue::new(
                "array.bool",
                Value::Array(Array::Bool(vec![true, false, true])),
            ),
            KeyValue::new(
                "array.int",
                Value::Array(Array::I64(vec![0, -1, 300, i64::MIN])),
            ),
            KeyValue::new(
                "array.double",
                Value::Array(Array::F64(vec![0.5, -0.0, 1e-300])),
            ),
            KeyValue::new(
                "array.string",
                Value::Array(Array::String(vec![
                    StringValue::from("a"),
                    StringValue::from(""),
                    StringValue::from("ünïcødé"),
                ])),
            ),
            KeyValue::new("array.empty", Value::Array(Array::I64(Vec::new()))),
            KeyValue::new(
                "array.string.empty",
                Value::Array(Array::String(Vec::new())),
            ),
        ]
    }

    fn scope_a() -> InstrumentationScope {
        InstrumentationScope::builder("scope-a")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
            .with_attributes([
                KeyValue::new("scope.attr", "x"),
                KeyValue::new("scope.n", 7_i64),
            ])
            .build()
    }

    /// Equal to `scope_a` (attributes compare unordered), but with the attributes reversed.
    fn scope_a_reordered() -> InstrumentationScope {
        InstrumentationScope::builder("scope-a")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
            .with_attributes([
                KeyValue::new("scope.n", 7_i64),
                KeyValue::new("scope.attr", "x"),
            ])
            .build()
    }

    fn scope_b() -> InstrumentationScope {
        InstrumentationScope::builder("scope-b").build()
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_schema_url(
                [
                    KeyValue::new("service.name", "hallmark-test"),
                    KeyValue::new("service.instance.id", "ïd-1"),
                    KeyValue::new("host.cores", 8_i64),
                    KeyValue::new(
                        "tags",
                        Value::Array(Array::String(vec!["a".into(), "b".into()])),
                    ),
                ],
                "https://opentelemetry.io/schemas/1.27.0",
            )
            .build()
    }

    /// The span that carries every field, checked by hand in `rich_span_fields_decode_as_set`.
    fn rich_span() -> SpanData {
        let mut rich = span("GET /orders/{id}", 0x1111, &scope_a());
        rich.span_context = context(
            0xabcd_ef01_2345_6789_abcd_ef01_2345_6789,
            0x1111,
            true,
            false,
            &[("vendor", "abc"), ("other", "x-1")],
        );
        rich.parent_span_id = SpanId::from(0x2222);
        rich.parent_span_is_remote = true;
        rich.span_kind = SpanKind::Server;
        rich.attributes = all_values();
        rich.dropped_attributes_count = 3;
        rich.events.events = vec![
            Event::new("exception", at(1_700_000_000_150_000_000), all_values(), 2),
            Event::new(
                "no attributes",
                at(1_700_000_000_160_000_000),
                Vec::new(),
                0,
            ),
            Event::new("", UNIX_EPOCH, vec![KeyValue::new("k", "v")], 0),
        ];
        rich.events.dropped_count = 4;
        rich.links.links = vec![
            Link::new(
                context(0x77, 0x88, true, true, &[("congo", "t61rcWkgMzE")]),
                vec![
                    KeyValue::new("link.kind", "follows"),
                    KeyValue::new("n", -1_i64),
                ],
                1,
            ),
            Link::new(context(0x99, 0xaa, false, false, &[]), Vec::new(), 0),
        ];
        rich.links.dropped_count = 5;
        rich.status = Status::error("boom — ünïcode");
        rich
    }

    fn rich_batch() -> Vec<SpanData> {
        let mut client = span("client", 0x3333, &scope_b());
        client.span_kind = SpanKind::Client;
        client.span_context = context(0x1, 0x3333, false, false, &[]);
        client.status = Status::Ok;
        client.attributes = vec![KeyValue::new("db.system", "postgresql")];

        let mut internal = span("internal", 0x4444, &scope_a_reordered());
        internal.parent_span_id = SpanId::from(0x1111);
        internal.events.dropped_count = 1;

        let mut producer = span("producer", 0x5555, &scope_b());
        producer.span_kind = SpanKind::Producer;
        producer.status = Status::error("");
        producer.links.dropped_count = 2;

        let mut consumer = span("consumer", 0x6666, &scope_a());
        consumer.span_kind = SpanKind::Consumer;
        consumer.parent_span_id = SpanId::from(0x5555);
        consumer.parent_span_is_remote = true;

        let mut before_epoch = span("", 0x7777, &scope_b());
        before_epoch.start_time = UNIX_EPOCH - Duration::from_secs(5);
        before_epoch.end_time = UNIX_EPOCH;

        vec![
            rich_span(),
            client,
            internal,
            producer,
            consumer,
            before_epoch,
        ]
    }

    #[test]
    fn matches_upstream_transform() {
        let resource = resource();
        let spans = rich_batch();
        let bytes = export_request(&resource, &spans);
        let mut expected = upstream_request(&resource, spans.clone());
        let expected_bytes = expected.encode_to_vec();

        let mut decoded = decode(&bytes);
        sort_scopes(&mut decoded);
        sort_scopes(&mut expected);
        assert_eq!(decoded, expected);

        // Upstream orders scope groups by first appearance and prost writes fields in tag
        // order, as this encoder does: the bytes are identical, which also checks that default
        // values are omitted exactly where prost omits them.
        assert_eq!(bytes, expected_bytes);
        assert_eq!(
            decoded.resource_spans[0].scope_spans.len(),
            2,
            "scopes grouped"
        );
    }

    #[test]
    fn empty_batch_matches_upstream() {
        for resource in [resource(), Resource::builder_empty().build()] {
            let bytes = export_request(&resource, &[]);
            let expected = upstream_request(&resource, Vec::new());
            assert_eq!(bytes, expected.encode_to_vec());
            let decoded = decode(&bytes);
            assert_eq!(decoded, expected);
            assert_eq!(decoded.resource_spans.len(), 1);
            assert!(decoded.resource_spans[0].scope_spans.is_empty());
        }
    }

    /// Independent of upstream: every field of one span, read back by hand.
    #[test]
    fn rich_span_fields_decode_as_set() {
        let request = decode(&export_request(&resource(), &[rich_span()]));
        let [resource_spans] = &request.resource_spans[..] else {
            panic!("one ResourceSpans expected");
        };
        assert_eq!(
            resource_spans.schema_url,
            "https://opentelemetry.io/schemas/1.27.0"
        );
        let resource = resource_spans.resource.as_ref().unwrap();
        assert_eq!(resource.attributes.len(), 4);
        assert!(resource.attributes.iter().any(|kv| kv.key == "service.name"
            && kv.value.as_ref().unwrap().value
                == Some(any_value::Value::StringValue("hallmark-test".into()))));

        let [scope_spans] = &resource_spans.scope_spans[..] else {
            panic!("one ScopeSpans expected");
        };
        assert_eq!(
            scope_spans.schema_url,
            "https://opentelemetry.io/schemas/1.26.0"
        );
        let scope = scope_spans.scope.as_ref().unwrap();
        assert_eq!(scope.name, "scope-a");
        assert_eq!(scope.version, "1.2.3");
        assert_eq!(scope.attributes.len(), 2);
        assert_eq!(scope.attributes[1].key, "scope.n");
        assert_eq!(
            scope.attributes[1].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(7))
        );

        let [span] = &scope_spans.spans[..] else {
            panic!("one Span expected");
        };
        assert_eq!(
            span.trace_id,
            0xabcd_ef01_2345_6789_abcd_ef01_2345_6789_u128.to_be_bytes()
        );
        assert_eq!(span.span_id, 0x1111_u64.to_be_bytes());
        assert_eq!(span.trace_state, "vendor=abc,other=x-1");
        assert_eq!(span.parent_span_id, 0x2222_u64.to_be_bytes());
        assert_eq!(
            span.flags,
            0x01 | 0x100 | 0x200,
            "sampled, remote parent known and set"
        );
        assert_eq!(span.name, "GET /orders/{id}");
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(span.end_time_unix_nano, 1_700_000_000_223_456_789);
        assert_eq!(span.dropped_attributes_count, 3);
        assert_eq!(span.dropped_events_count, 4);
        assert_eq!(span.dropped_links_count, 5);

        let values: Vec<_> = span
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.as_ref().unwrap().value.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(values.len(), all_values().len());
        assert_eq!(
            values[2],
            (
                "unicode",
                any_value::Value::StringValue("héllo wörld ✓ 日本語 🦀".into())
            )
        );
        assert_eq!(
            values[1],
            ("empty.string", any_value::Value::StringValue(String::new()))
        );
        assert_eq!(values[3].0, "");
        assert_eq!(
            values[5],
            ("bool.false", any_value::Value::BoolValue(false))
        );
        assert_eq!(values[8], ("int.min", any_value::Value::IntValue(i64::MIN)));
        assert_eq!(
            values[10],
            ("double.half", any_value::Value::DoubleValue(0.5))
        );
        let any_value::Value::DoubleValue(negative_zero) = values[11].1 else {
            panic!("double expected");
        };
        assert!(negative_zero == 0.0 && negative_zero.is_sign_negative());
        let any_value::Value::ArrayValue(ints) = &values[15].1 else {
            panic!("array expected");
        };
        let ints: Vec<_> = ints.values.iter().map(|v| v.value.clone()).collect();
        assert_eq!(
            ints,
            [0, -1, 300, i64::MIN].map(|i| Some(any_value::Value::IntValue(i)))
        );
        let any_value::Value::ArrayValue(empty) = &values[18].1 else {
            panic!("array expected");
        };
        assert!(empty.values.is_empty());

        assert_eq!(span.events.len(), 3);
        assert_eq!(span.events[0].name, "exception");
        assert_eq!(span.events[0].time_unix_nano, 1_700_000_000_150_000_000);
        assert_eq!(span.events[0].attributes.len(), all_values().len());
        assert_eq!(span.events[0].dropped_attributes_count, 2);
        assert_eq!(span.events[1].name, "no attributes");
        assert!(span.events[1].attributes.is_empty());
        assert_eq!(span.events[2].time_unix_nano, 0);
        assert_eq!(span.events[2].attributes[0].key, "k");

        let link = &span.links[0];
        assert_eq!(link.trace_id, 0x77_u128.to_be_bytes());
        assert_eq!(link.span_id, 0x88_u64.to_be_bytes());
        assert_eq!(link.trace_state, "congo=t61rcWkgMzE");
        assert_eq!(link.attributes.len(), 2);
        assert_eq!(link.attributes[0].key, "link.kind");
        assert_eq!(link.dropped_attributes_count, 1);
        assert_eq!(link.flags, 0x01 | 0x100 | 0x200);
        assert_eq!(span.links[1].flags, 0x100);
        assert!(span.links[1].trace_state.is_empty());

        let status = span.status.as_ref().unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "boom — ünïcode");
    }
}
