//! The operator console: one HTML page, a script and a style sheet, built
//! into the binary (`console/`), served at `/` on the operator listener.
//! The page holds no data and no authority: it asks for the API's Bearer
//! token, keeps it in the tab's sessionStorage, and sends it with every
//! request, so no cookie can be ridden (no CSRF surface). Everything a
//! terminal reports is put on the page as text, never as markup, and the
//! content security policy allows no inline script besides.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

use super::service::Server;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "the console's page", body = String, content_type = "text/html")))]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

#[utoipa::path(get, path = "/console.js", tag = "console",
    responses((status = 200, description = "the console's script", body = String, content_type = "text/javascript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

#[utoipa::path(get, path = "/console.css", tag = "console",
    responses((status = 200, description = "the console's style sheet", body = String, content_type = "text/css")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/", get(page))
        .route("/console.js", get(script))
        .route("/console.css", get(style))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_loads_only_its_own_script_and_styles() {
        let page = super::INDEX;
        assert!(page.contains(r#"<script src="/console.js" defer></script>"#));
        assert!(
            !page.contains("<script>"),
            "no inline script: the policy forbids it"
        );
        // Terminal data goes in as text, never as markup.
        assert!(!super::SCRIPT.contains("innerHTML"));
        assert!(!super::SCRIPT.contains("insertAdjacentHTML"));
        assert!(!super::SCRIPT.contains("document.write"));
        assert!(page.len() + super::SCRIPT.len() + super::STYLE.len() < 64 * 1024);
    }
}
