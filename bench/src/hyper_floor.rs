//! `proxy-overhead`'s `hyper-floor` system: the least a Rust proxy on this stack does per
//! request — hyper's HTTP/1 server handing each request, URI replaced, to hyper-util's pooled
//! client and the answer back, on tokio's multi-threaded runtime; no router, no middleware, no
//! header rewriting, no JSON. Run as a child process of the bench (`fanout-bench hyper-floor
//! UPSTREAM_URL`, hidden), so its CPU is counted apart; it prints `{"addr": "127.0.0.1:PORT"}`.
//! mcp-fanout's proxy costs this much plus its own work: the floor says how much of the gap to
//! nginx is the stack's, and how much the service's.

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::error::{BenchError, Result};

type Answer = Response<http_body_util::Either<Incoming, String>>;

/// Serves until killed.
pub async fn serve(upstream: &str) -> Result<()> {
    let uri: Uri = upstream
        .parse()
        .map_err(|e| BenchError::Failed(format!("upstream URL {upstream}: {e}")))?;
    let mut http = HttpConnector::new();
    // As reqwest and nginx (`tcp_nodelay on`) do.
    http.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(http);
    let listener = listen("hyper-floor").await?;
    loop {
        let tcp = accept(&listener).await?;
        let (client, uri) = (client.clone(), uri.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                *req.uri_mut() = uri.clone();
                req.headers_mut().remove(hyper::header::HOST);
                async move {
                    Ok::<Answer, Infallible>(match client.request(req).await {
                        Ok(r) => r.map(http_body_util::Either::Left),
                        Err(e) => {
                            let mut r = Response::new(http_body_util::Either::Right(e.to_string()));
                            *r.status_mut() = StatusCode::BAD_GATEWAY;
                            r
                        }
                    })
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// A floor proxy's listener on a free loopback port, announced on stdout as the bench waits for
/// it: `{"addr": "127.0.0.1:PORT"}`.
pub async fn listen(what: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::io(format!("binding the {what} proxy"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::io(format!("the {what} proxy's address"), e))?;
    println!("{}", serde_json::json!({ "addr": addr.to_string() }));
    Ok(listener)
}

/// The next client connection, with Nagle off (as nginx's `tcp_nodelay on`).
pub async fn accept(listener: &TcpListener) -> Result<tokio::net::TcpStream> {
    let (tcp, _) = listener
        .accept()
        .await
        .map_err(|e| BenchError::io("accepting", e))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}
