//! A recording HTTP/1.1 upstream for proxy mode: a real server on a loopback port that keeps every
//! request it receives (method, target, headers as sent, body, the peer) and answers each with one
//! canned response written byte for byte, whatever headers that holds (hop-by-hop ones included) —
//! or, scripted, with the answer a function picks for each request (one that stops partway and
//! holds the connection open, too).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::wire::{find, header_values};

/// The answer the upstream gives to every request.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub reason: String,
    /// Written in order, as given; `Content-Length` is added from the body.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Canned {
    /// `200 OK` with a JSON body.
    pub fn json(body: &serde_json::Value) -> Canned {
        Canned {
            status: 200,
            reason: "OK".into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Canned {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The answer as written: status line, headers, `Content-Length`, body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// What a scripted upstream answers one request with.
#[derive(Debug, Clone)]
pub enum Reply {
    /// These bytes; the connection then serves its next request.
    Answer(Vec<u8>),
    /// These bytes (a head and part of a body, say), then nothing more: the connection is held
    /// open until the peer closes it.
    Stall(Vec<u8>),
    /// These bytes, then the connection is closed (without `Connection: close`: as an upstream
    /// whose keep-alive timeout ends an idle connection right after an answer): its write side at
    /// once, then whole once the peer has closed its own.
    AnswerAndClose(Vec<u8>),
}

impl From<Canned> for Reply {
    fn from(c: Canned) -> Reply {
        Reply::Answer(c.to_bytes())
    }
}

/// Picks the answer to each request (it sees every request received so far, this one last).
type Script = dyn Fn(&[Recorded]) -> Reply + Send + Sync;

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// In the order received; names as sent (compare case-insensitively).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The JSON-RPC method of the body, if it names one.
    pub fn rpc_method(&self) -> Option<String> {
        self.json()
            .get("method")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    }
}

/// The session id [`legacy_handshake`] issues.
pub const LEGACY_SESSION: &str = "legacy-session-1";

/// What a 2025-era MCP server (the Python SDK 1.x FastMCP, stateful) answers to the era adapter's
/// requests before any call: `server/discover` (a request without its session) is refused with
/// `400` and a JSON-RPC `-32600` error; `initialize` opens [`LEGACY_SESSION`]; a notification is
/// `202`. `None` for any other request.
pub fn legacy_handshake(req: &Recorded) -> Option<Reply> {
    let msg = req.json();
    let reply = match msg.get("method").and_then(serde_json::Value::as_str)? {
        "server/discover" => Canned {
            status: 400,
            reason: "Bad Request".into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::json!({"jsonrpc": "2.0", "id": "server-error",
                "error": {"code": -32600, "message": "Bad Request: Missing session ID"}})
            .to_string()
            .into_bytes(),
        },
        "initialize" => Canned::json(&serde_json::json!({"jsonrpc": "2.0", "id": msg["id"],
            "result": {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                       "serverInfo": {"name": "legacy", "version": "1"}}}))
        .header("Mcp-Session-Id", LEGACY_SESSION),
        m if m.starts_with("notifications/") => Canned {
            status: 202,
            reason: "Accepted".into(),
            headers: Vec::new(),
            body: Vec::new(),
        },
        _ => return None,
    };
    Some(reply.into())
}

/// The running upstream; stops when dropped.
pub struct RecordingUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Recorded>>>,
    /// Connections accepted and not yet closed by the peer.
    open: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl RecordingUpstream {
    /// Listens on a free loopback port and answers every request with `canned`.
    pub async fn start(canned: Canned) -> Result<RecordingUpstream> {
        let answer = canned.to_bytes();
        RecordingUpstream::scripted(move |_| Reply::Answer(answer.clone())).await
    }

    /// Listens on a free loopback port and answers each request with what `script` picks.
    pub async fn scripted(
        script: impl Fn(&[Recorded]) -> Reply + Send + Sync + 'static,
    ) -> Result<RecordingUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("binding the recording upstream", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("the recording upstream's address", e))?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let log = received.clone();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (script, log, counted) = (script.clone(), log.clone(), counted.clone());
                tokio::spawn(async move {
                    serve(tcp, peer, script, log).await;
                    counted.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Ok(RecordingUpstream {
            addr,
            received,
            open,
            task,
        })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections open to it: accepted, and not yet closed by their peer (a connection it ends
    /// itself after an answer, [`Reply::AnswerAndClose`], counts until the peer has closed its
    /// side too). Exact, where a count read from `/proc/net/tcp` can miss a row while other
    /// sockets come and go.
    pub fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Recorded> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection: requests framed by `Content-Length` (what a proxy's client sends),
/// kept alive until the peer closes.
async fn serve(
    mut tcp: TcpStream,
    peer: SocketAddr,
    script: Arc<Script>,
    log: Arc<Mutex<Vec<Recorded>>>,
) {
    let mut buf = Vec::with_capacity(8192);
    loop {
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 8192];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut line = lines.next().unwrap_or_default().split(' ');
        let method = line.next().unwrap_or_default().to_string();
        let target = line.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let len = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let body_start = end + 4;
        while buf.len() < body_start + len {
            let mut chunk = [0u8; 8192];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[body_start..body_start + len].to_vec();
        buf.drain(..body_start + len);
        let reply = {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            log.push(Recorded {
                method,
                target,
                headers,
                body,
                peer,
            });
            script(&log)
        };
        match reply {
            Reply::Answer(bytes) => {
                if tcp.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::AnswerAndClose(bytes) => {
                if tcp.write_all(&bytes).await.is_ok() && tcp.shutdown().await.is_ok() {
                    let mut chunk = [0u8; 8192];
                    while matches!(tcp.read(&mut chunk).await, Ok(n) if n > 0) {}
                }
                return;
            }
            Reply::Stall(bytes) => {
                if tcp.write_all(&bytes).await.is_ok() {
                    // Nothing more: wait for the peer to close.
                    let mut chunk = [0u8; 8192];
                    while matches!(tcp.read(&mut chunk).await, Ok(n) if n > 0) {}
                }
                return;
            }
        }
    }
}

/// Established TCP connections to `127.0.0.1:port` (their connecting side: a replica's to an
/// upstream listening there), from `/proc/net/tcp`.
pub fn connections_to(port: u16) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return 0;
    };
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}
