//! What the server logs, in a test binary of its own: the capturing subscriber is
//! set for this test's thread only, and tracing caches per call site whether anyone
//! listens. A call site first reached by a concurrent test on another thread, while
//! this subscriber was being set, stays cached as unheard, and this test then missed
//! lines at random. Alone in its process, nothing else reaches a call site first.

mod common;

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use common::TestApp;

/// Collects what the server logs.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn request_logs_never_carry_query_strings() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = TestApp::new(&[]);
    let secret = "setup-token-that-must-not-be-logged";
    for path in [
        format!("/setup?token={secret}"),
        format!("/oauth/authorize/approve?ticket={secret}"),
    ] {
        let answer = app
            .send(Request::get(&path).body(Body::empty()).expect("request"))
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
    }
    let logged =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(
        logged.contains("/oauth/authorize/approve"),
        "requests are logged: {logged}"
    );
    assert!(!logged.contains(secret), "{logged}");
}
