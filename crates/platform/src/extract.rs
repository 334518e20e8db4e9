//! Request extractors whose rejections answer with the JSON error body instead of plain text.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::error_response;

/// The `{order_id}` path segment as a UUID; anything else is a 400 `invalid_order_id`.
#[derive(Debug, Clone, Copy)]
pub struct OrderId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for OrderId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<Uuid>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_order_id",
                "the order id in the path is not a UUID",
            )),
            Err(other) => Err(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                &other.body_text(),
            )),
        }
    }
}

/// A JSON body; malformed JSON is a 400 `invalid_json` that says where it went wrong.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            )),
            Err(JsonRejection::JsonSyntaxError(err)) => Err(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                &format!("the body is not valid JSON: {}", err.body_text()),
            )),
            Err(JsonRejection::JsonDataError(err)) => Err(error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                &err.body_text(),
            )),
            Err(other) => Err(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &other.body_text(),
            )),
        }
    }
}
