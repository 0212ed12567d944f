//! axum's `Path` and `Query` extractors and a request body's bytes, with their rejections in the
//! API's JSON error shape (`{"error": "..."}`), where axum's own answer plain text. Handlers use
//! these under the same names.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::api::ApiError;

/// The most a request body may hold (the router's `DefaultBodyLimit`).
pub const MAX_BODY: usize = 5 * 1024 * 1024;

/// A request's whole body. One past [`MAX_BODY`] is a 413, one that could not be read (the
/// connection broke, or the body did not arrive within the listener's deadline) a 400.
pub struct Body(pub Bytes);

impl<S> FromRequest<S> for Body
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(Body)
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {} MiB", MAX_BODY >> 20),
                ),
                status => ApiError::new(
                    status,
                    format!(
                        "the request body could not be read: {}",
                        std::error::Error::source(&e)
                            .map_or_else(|| e.body_text(), |cause| cause.to_string())
                    ),
                ),
            })
    }
}

/// Path parameters; a segment that cannot be read (bad percent-encoding, not UTF-8) is a 400.
pub struct Path<T>(pub T);

/// The query string; a value that does not fit its field is a 400 naming it.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
    }
}

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
    }
}
