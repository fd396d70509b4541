//! `/upgrades/<platform>/<version>/{manifest.json, voi-agent}` on the
//! tracker port, which terminals already reach. The binary honours
//! `Range: bytes=N-`, so a cut download resumes.

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

use super::Upgrades;

pub fn router(upgrades: Arc<Upgrades>) -> Router {
    Router::new()
        .route("/upgrades/:platform/:version/:file", get(file))
        .with_state(upgrades)
}

/// `bytes=N-` → N.
fn range_start(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let n = v.strip_prefix("bytes=")?.strip_suffix('-')?;
    n.parse().ok()
}

async fn file(
    State(up): State<Arc<Upgrades>>,
    UrlPath((platform, version, file)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match file.as_str() {
        "manifest.json" => match up.manifest(&platform, &version) {
            Some(m) => axum::Json(m).into_response(),
            None => (StatusCode::NOT_FOUND, "no such package").into_response(),
        },
        "voi-agent" => {
            let Some(path) = up.binary_path(&platform, &version) else {
                return (StatusCode::NOT_FOUND, "no such package").into_response();
            };
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                }
            };
            let len = bytes.len() as u64;
            match range_start(&headers) {
                Some(start) if start < len => (
                    StatusCode::PARTIAL_CONTENT,
                    [
                        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                        (
                            header::CONTENT_RANGE,
                            format!("bytes {start}-{}/{len}", len - 1),
                        ),
                    ],
                    bytes[start as usize..].to_vec(),
                )
                    .into_response(),
                Some(_) => (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                )
                    .into_response(),
                None => (
                    [(header::CONTENT_TYPE, "application/octet-stream".to_string())],
                    bytes,
                )
                    .into_response(),
            }
        }
        _ => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
