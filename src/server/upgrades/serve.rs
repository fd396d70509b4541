//! `/upgrades/<platform>/<version>/{manifest.json, voi-agent}` on the
//! tracker port, which terminals already reach. The binary honours
//! `Range: bytes=N-`, so a cut download resumes.

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tower_http::services::ServeFile;

use super::Upgrades;

pub fn router(upgrades: Arc<Upgrades>) -> Router {
    Router::new()
        .route("/upgrades/:platform/:version/:file", get(file))
        .with_state(upgrades)
}

async fn file(
    State(up): State<Arc<Upgrades>>,
    UrlPath((platform, version, file)): UrlPath<(String, String, String)>,
    req: Request,
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
            // Streamed from disk in chunks, with Range: memory does not grow
            // with the number of downloads. A reader that stops reading is
            // cut by the listener's write timeout (http_serve).
            // The file has no extension: ServeFile answers octet-stream.
            match ServeFile::new(&path).try_call(req).await {
                Ok(resp) => resp.map(Body::new),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
        _ => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
