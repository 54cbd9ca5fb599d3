//! What the server logs. In a test binary of its own: `tracing` caches per call site
//! whether anyone listens, and tests running beside this one in the same process
//! could leave a call site cached as silent.

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
    let status = send(&app, &format!("/setup?token={secret}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let status = send(&app, &format!("/oauth/authorize/approve?ticket={secret}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let logged =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(
        logged.contains("/oauth/authorize/approve"),
        "requests are logged: {logged}"
    );
    assert!(!logged.contains(secret), "{logged}");
}

async fn send(app: &TestApp, path: &str) -> StatusCode {
    app.send(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .status
}
