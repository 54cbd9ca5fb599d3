//! Metadata-document fetches ignore proxy environment variables: a proxy would fetch
//! on our behalf from wherever it sits, and the address check on our side would mean
//! nothing. In a test binary of its own, because it sets process-wide variables.

use axum::{routing::get, Router};
use gatehouse::outbound::DocumentFetcher;

#[tokio::test]
async fn fetches_go_direct_whatever_the_proxy_variables_say() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/doc", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let app = Router::new().route("/doc", get(|| async { "{}" }));
        let _ = axum::serve(listener, app).await;
    });
    // A proxy that does not exist: any fetch through it fails.
    for name in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::set_var(name, "http://127.0.0.1:9");
    }
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");
    let fetcher = DocumentFetcher::new(true).expect("client");
    let fetched = fetcher
        .fetch(&url::Url::parse(&url).expect("url"), false)
        .await
        .map_err(|e| e.to_string());
    assert_eq!(fetched.map(|f| f.body), Ok(b"{}".to_vec()));
}
