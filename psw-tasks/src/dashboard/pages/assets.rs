//! The static files, embedded in the binary: the page script and style, and uPlot 1.6.32
//! (MIT, from the npm registry: `npm pack uplot@1.6.32`, `dist/uPlot.iife.min.js` and
//! `dist/uPlot.min.css`, its licence beside them).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const FILES: [(&str, &str); 4] = [
    ("app.js", include_str!("../static/app.js")),
    ("app.css", include_str!("../static/app.css")),
    (
        "uPlot.iife.min.js",
        include_str!("../static/uPlot.iife.min.js"),
    ),
    ("uPlot.min.css", include_str!("../static/uPlot.min.css")),
];

pub(super) async fn serve(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _)| *name == file) {
        Some((name, text)) => ([content_type(name)], *text).into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// `Content-Type` of a static file.
fn content_type(name: &str) -> (header::HeaderName, &'static str) {
    let kind = if name.ends_with(".js") {
        "text/javascript; charset=utf-8"
    } else if name.ends_with(".css") {
        "text/css; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    (header::CONTENT_TYPE, kind)
}
