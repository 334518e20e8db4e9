//! Reading and validating an order upload: the multipart body, the order JSON and the model.
//!
//! Every problem is reported with a stable code and a message that says what to change; nothing
//! is stored until the whole request is valid.

use anyhow::Context as _;
use axum::extract::Multipart;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use domain::Material;
use domain::events::OrderSource;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use platform::error::ApiError;

/// The `order` part as sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrderRequest {
    pub customer: CustomerRequest,
    pub material: String,
    /// Ring size or other size note; numbers are accepted and kept as text.
    #[serde(default, deserialize_with = "size_as_text")]
    pub size: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub external_order_id: Option<String>,
    #[serde(default)]
    pub partner_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomerRequest {
    pub name: String,
    pub email: String,
    #[serde(default)]
    pub phone: Option<String>,
}

fn size_as_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(Option::<Size>::deserialize(d)?.map(|size| match size {
        Size::Text(text) => text,
        Size::Number(number) => number.to_string(),
    }))
}

/// A validated order, ready to store.
#[derive(Debug, Clone)]
pub(crate) struct ValidOrder {
    pub name: String,
    /// Trimmed and lowercased.
    pub email: String,
    pub phone: Option<String>,
    pub material: Material,
    pub size: Option<String>,
    pub comment: Option<String>,
    pub external_id: Option<String>,
    pub partner_id: Option<String>,
    pub source: OrderSource,
}

impl ValidOrder {
    /// Places the order for `partner` (the one the caller's token names), or as a web order.
    pub fn set_partner(&mut self, partner: Option<String>) {
        self.source = if partner.is_some() {
            OrderSource::PartnerApi
        } else {
            OrderSource::Web
        };
        self.partner_id = partner;
    }
}

/// The uploaded model.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    /// Sanitized, always ending in `.stl`.
    pub file_name: String,
    pub bytes: Bytes,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// A complete, valid upload.
#[derive(Debug, Clone)]
pub(crate) struct Upload {
    pub order: ValidOrder,
    pub model: Model,
    /// Hex SHA-256 over the order JSON and the model: what makes two requests "the same".
    pub request_hash: String,
}

const MAX_TEXT: usize = 200;
const MAX_COMMENT: usize = 2000;

fn multipart_error(err: MultipartError, limit: usize) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge { limit }
    } else {
        ApiError::bad_request("invalid_multipart", err.body_text())
    }
}

/// Reads the `order` and `model` parts.
pub(crate) async fn read(
    multipart: Result<Multipart, MultipartRejection>,
    max_model_bytes: usize,
) -> Result<Upload, ApiError> {
    let mut multipart = multipart.map_err(|_| {
        ApiError::bad_request(
            "invalid_multipart",
            "send the order as multipart/form-data with an `order` part (JSON) and a `model` part (STL file)",
        )
    })?;
    let mut order_json: Option<Bytes> = None;
    let mut model: Option<(String, Bytes)> = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, max_model_bytes))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let repeated = match name.as_str() {
            "order" => order_json.is_some(),
            "model" => model.is_some(),
            _ => false,
        };
        if repeated {
            // Taking the first or the last would store something other than what a reader of
            // the request sees: refuse, whichever part it is.
            return Err(ApiError::bad_request(
                "duplicate_part",
                format!("the `{name}` part appears more than once; send it once"),
            ));
        }
        match field.name() {
            Some("order") => {
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| multipart_error(e, max_model_bytes))?;
                order_json = Some(bytes);
            }
            Some("model") => {
                let file_name = field.file_name().unwrap_or("model.stl").to_owned();
                let mut buffer = BytesMut::new();
                let mut too_large = false;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(e, max_model_bytes))?
                {
                    if too_large || buffer.len() + chunk.len() > max_model_bytes {
                        too_large = true;
                        buffer = BytesMut::new();
                        continue;
                    }
                    buffer.extend_from_slice(&chunk);
                }
                if too_large {
                    // Read (and drop) the rest of what the client sends, up to the body limit,
                    // so that it reads the 413 instead of a connection closed under its upload.
                    drop(field);
                    while let Ok(Some(mut rest)) = multipart.next_field().await {
                        while let Ok(Some(_)) = rest.chunk().await {}
                    }
                    return Err(ApiError::TooLarge {
                        limit: max_model_bytes,
                    });
                }
                model = Some((file_name, buffer.freeze()));
            }
            other => {
                return Err(ApiError::bad_request(
                    "unknown_part",
                    format!(
                        "unexpected part `{}`; send only `order` and `model`",
                        other.unwrap_or_default()
                    ),
                ));
            }
        }
    }
    let order_json = order_json.ok_or_else(|| {
        ApiError::bad_request("missing_part", "the `order` part (JSON) is missing")
    })?;
    let (file_name, bytes) = model.ok_or_else(|| {
        ApiError::bad_request("missing_part", "the `model` part (STL file) is missing")
    })?;

    let request: OrderRequest = serde_json::from_slice(&order_json).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request(
                "invalid_json",
                format!("the `order` part is not valid JSON: {e}"),
            )
        } else {
            ApiError::unprocessable("invalid_order", format!("the `order` part is invalid: {e}"))
        }
    })?;
    let order = validate(&request)?;
    let model = check_model_off_the_runtime(file_name, bytes).await?;

    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&request).expect("the request serializes"));
    hasher.update(model.sha256.as_bytes());
    let request_hash = hex::encode(hasher.finalize());
    Ok(Upload {
        order,
        model,
        request_hash,
    })
}

fn required(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_order",
            format!("`{field}` must not be empty"),
        ));
    }
    optional(field, Some(value), max).map(|v| v.unwrap_or_default())
}

fn optional(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if v.chars().count() > max => Err(ApiError::unprocessable(
            "invalid_order",
            format!("`{field}` is longer than {max} characters"),
        )),
        // A comment may have lines and tabs; no field may hold other control characters (a NUL
        // cannot even be stored).
        Some(v)
            if v.chars().any(|c| {
                c.is_control() && !(field == "comment" && matches!(c, '\n' | '\r' | '\t'))
            }) =>
        {
            Err(ApiError::unprocessable(
                "invalid_order",
                format!("`{field}` contains control characters"),
            ))
        }
        Some(v) => Ok(Some(v.to_owned())),
    }
}

fn validate(request: &OrderRequest) -> Result<ValidOrder, ApiError> {
    let material: Material = request
        .material
        .trim()
        .parse()
        .map_err(|e| ApiError::unprocessable("unknown_material", format!("{e}")))?;
    let name = required("customer.name", &request.customer.name, MAX_TEXT)?;
    let email = required("customer.email", &request.customer.email, MAX_TEXT)?.to_lowercase();
    let plausible_email = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !email.contains(' ')
    });
    if !plausible_email {
        return Err(ApiError::unprocessable(
            "invalid_order",
            "`customer.email` is not an e-mail address",
        ));
    }
    let phone = optional("customer.phone", request.customer.phone.as_deref(), 40)?;
    let partner_id = optional("partner_id", request.partner_id.as_deref(), 100)?;
    if let Some(partner) = &partner_id
        && !partner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ApiError::unprocessable(
            "invalid_order",
            "`partner_id` may contain only letters, digits, `-`, `_` and `.`",
        ));
    }
    Ok(ValidOrder {
        name,
        email,
        phone,
        material,
        size: optional("size", request.size.as_deref(), 20)?,
        comment: optional("comment", request.comment.as_deref(), MAX_COMMENT)?,
        external_id: optional(
            "external_order_id",
            request.external_order_id.as_deref(),
            100,
        )?,
        source: if partner_id.is_some() {
            OrderSource::PartnerApi
        } else {
            OrderSource::Web
        },
        partner_id,
    })
}

/// Model checks running at once; more uploads wait their turn. Reading a 50 MB ASCII model
/// takes a CPU for a while: on the blocking pool, bounded, it never holds up the requests the
/// runtime serves meanwhile (`/health` included).
const CONCURRENT_MODEL_CHECKS: usize = 2;

async fn check_model_off_the_runtime(file_name: String, bytes: Bytes) -> Result<Model, ApiError> {
    static CHECKS: tokio::sync::Semaphore =
        tokio::sync::Semaphore::const_new(CONCURRENT_MODEL_CHECKS);
    let _turn = CHECKS
        .acquire()
        .await
        .context("the model check queue is closed")?;
    tokio::task::spawn_blocking(move || check_model(&file_name, bytes))
        .await
        .context("the model check did not finish")?
}

/// Shop checks only that the upload *is* an STL file within the size every model must keep to;
/// whether it can be made (closed, non-empty, not too large) is MES's call, which rejects the
/// order with a reason the customer can act on.
fn check_model(file_name: &str, bytes: Bytes) -> Result<Model, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_model",
            "the model file is empty; upload an STL file",
        ));
    }
    match domain::stl::parse(&bytes) {
        Err(err @ domain::stl::StlError::Unreadable(_)) => {
            return Err(ApiError::unprocessable(
                "invalid_model",
                format!("the model is not a readable STL file: {err}"),
            ));
        }
        Err(err @ domain::stl::StlError::TooManyTriangles { .. }) => {
            return Err(ApiError::unprocessable("invalid_model", err.to_string()));
        }
        _ => {}
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Model {
        file_name: sanitize_file_name(file_name),
        bytes,
        sha256,
    })
}

/// Letters, digits, `-`, `_` and `.` only, at most 100 characters, ending in `.stl`.
fn sanitize_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    let stem = match clean.len().checked_sub(4) {
        Some(cut) if clean[cut..].eq_ignore_ascii_case(".stl") => &clean[..cut],
        _ => clean.as_str(),
    };
    let stem = stem.trim_start_matches('.');
    if stem.is_empty() {
        "model.stl".into()
    } else {
        format!("{stem}.stl")
    }
}

/// The `Idempotency-Key` header: printable ASCII, at most 255 characters.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "the Idempotency-Key header must be 1 to 255 printable ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_made_safe_for_object_keys() {
        assert_eq!(
            sanitize_file_name("Ring v2 (final).STL"),
            "Ring_v2__final_.stl"
        );
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd.stl");
        assert_eq!(sanitize_file_name("C:\\models\\ring.stl"), "ring.stl");
        assert_eq!(sanitize_file_name(".stl"), "model.stl");
        assert_eq!(sanitize_file_name("ring"), "ring.stl");
    }

    #[test]
    fn a_numeric_size_is_kept_as_text() {
        let request: OrderRequest = serde_json::from_str(
            r#"{"customer":{"name":"A","email":"a@b.co"},"material":"gold_585","size":17.5}"#,
        )
        .unwrap();
        assert_eq!(request.size.as_deref(), Some("17.5"));
    }

    #[test]
    fn a_comment_may_have_lines_and_tabs_but_no_field_may_hold_other_control_characters() {
        assert_eq!(
            optional("comment", Some("engrave:\n\t\"A & B\""), 100).unwrap(),
            Some("engrave:\n\t\"A & B\"".to_owned())
        );
        for text in ["nul\0here", "bell\u{7}", "escape\u{1b}[2J"] {
            let err = optional("comment", Some(text), 100).unwrap_err();
            assert!(err.to_string().contains("control characters"), "{text:?}");
        }
        assert!(optional("size", Some("17\n"), 100).is_ok(), "trimmed away");
        assert!(optional("size", Some("17\n5"), 100).is_err());
    }
}
