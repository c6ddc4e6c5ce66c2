//! A small client for a node's admin API (its routes are listed in the
//! `admin` module; the bodies are `rumor.api.v1` types), used by the
//! `rumor status`, `send` and `gossip` commands and by tests. One HTTP/1
//! connection per request: admin calls are rare, and this keeps no state.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use proto::api::{
    GossipCreated, GossipReceipt, GossipRequest, Isolate, KeyIds, KeyOperation, KeyRequest, LinkDelay, MemberStatus,
    Members, ReplyLine, Ring, SendRequest,
};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection to the node.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The admin address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to {addr}: {source}")]
    Http {
        /// The admin address.
        addr: String,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The node answered with an unexpected status.
    #[error("{addr} answered {status}: {body}")]
    Status {
        /// The admin address.
        addr: String,
        /// The HTTP status.
        status: StatusCode,
        /// The body, trimmed.
        body: String,
    },
    /// The body was not the expected JSON.
    #[error("{addr} sent a body that does not parse: {source}")]
    Decode {
        /// The admin address.
        addr: String,
        /// serde's error.
        source: serde_json::Error,
    },
    /// No complete answer within the client's timeout.
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout {
        /// The admin address.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// Talks to one node's admin endpoint.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: String,
    timeout: Duration,
    /// Sent as `Authorization: Bearer ...` (a gateway's client edge wants one).
    bearer: Option<String>,
}

impl AdminClient {
    /// A client for the admin endpoint at `addr` (`host:port`), with a 10 s
    /// timeout per call.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            timeout: Duration::from_secs(10),
            bearer: None,
        }
    }

    /// Sends `credential` as `Authorization: Bearer` with every request, for
    /// the other rumor HTTP APIs that want one (a gateway's client edge).
    pub fn with_bearer(mut self, credential: impl Into<String>) -> Self {
        self.bearer = Some(credential.into());
        self
    }

    /// Sets the timeout of each whole call (a streamed reply included).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The admin address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET /v1/members`.
    pub async fn members(&self) -> Result<Members, ClientError> {
        self.get_json("/v1/members").await
    }

    /// `GET /v1/members?status=...`: only the members in one of `states`
    /// (every member when `states` is empty), with the view checksum. Much
    /// smaller than [`members`](Self::members) in a large cluster that
    /// mostly agrees.
    pub async fn members_in(&self, states: &[MemberStatus]) -> Result<Members, ClientError> {
        if states.is_empty() {
            return self.members().await;
        }
        let list: Vec<&str> = states.iter().map(|s| s.short_name()).collect();
        self.get_json(&format!("/v1/members?status={}", list.join(","))).await
    }

    /// `GET /v1/ring`.
    pub async fn ring(&self) -> Result<Ring, ClientError> {
        self.get_json("/v1/ring").await
    }

    /// `GET /metrics`, the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let (status, body) = self.text(Method::GET, "/metrics", None).await?;
        self.expect_ok(status, body)
    }

    /// `GET /readyz`: true when the node is ready.
    pub async fn ready(&self) -> Result<bool, ClientError> {
        let (status, _) = self.text(Method::GET, "/readyz", None).await?;
        Ok(status == StatusCode::OK)
    }

    /// `POST /v1/gossip`.
    pub async fn gossip(&self, payload: &str) -> Result<GossipCreated, ClientError> {
        let req = GossipRequest {
            payload: payload.to_owned(),
        };
        let (status, body) = self.text(Method::POST, "/v1/gossip", Some(to_json(&req))).await?;
        let body = self.expect_ok(status, body)?;
        self.decode(&body)
    }

    /// `GET /v1/keys`: key ids, the primary first.
    pub async fn keys(&self) -> Result<KeyIds, ClientError> {
        self.get_json("/v1/keys").await
    }

    /// `POST /v1/keys/{op}`: one step of a key rotation.
    pub async fn change_key(&self, op: KeyOperation, key: &str) -> Result<KeyIds, ClientError> {
        let req = KeyRequest { key: key.to_owned() };
        let (status, body) = self
            .text(
                Method::POST,
                &format!("/v1/keys/{}", op.short_name()),
                Some(to_json(&req)),
            )
            .await?;
        let body = self.expect_ok(status, body)?;
        self.decode(&body)
    }

    /// `POST /v1/fault/isolate`: cuts (`true`) or restores the node's gossip
    /// traffic; refused unless the node allows fault injection.
    pub async fn isolate(&self, isolated: bool) -> Result<(), ClientError> {
        let req = Isolate { isolated };
        let (status, body) = self
            .text(Method::POST, "/v1/fault/isolate", Some(to_json(&req)))
            .await?;
        self.expect_ok(status, body).map(|_| ())
    }

    /// `POST /v1/fault/delay`: delays the node's outbound gossip traffic
    /// by `delay_ms` (0 restores it); refused unless the node allows fault
    /// injection.
    pub async fn delay(&self, delay_ms: u32) -> Result<(), ClientError> {
        let req = LinkDelay { delay_ms };
        let (status, body) = self.text(Method::POST, "/v1/fault/delay", Some(to_json(&req))).await?;
        self.expect_ok(status, body).map(|_| ())
    }

    /// `GET /v1/gossip/{origin}/{seq}`: `None` when the node has not received it.
    pub async fn gossip_receipt(&self, origin: &str, seq: u64) -> Result<Option<GossipReceipt>, ClientError> {
        let (status, body) = self
            .text(Method::GET, &format!("/v1/gossip/{origin}/{seq}"), None)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = self.expect_ok(status, body)?;
        self.decode(&body).map(Some)
    }

    /// `POST /v1/send`: calls `each` with every reply line as it arrives and
    /// returns them all. A refusal is a single error line (with a non-200
    /// status), not an `Err`: it is an answer. An `Err` means no complete
    /// answer arrived (the connection broke, or the body ended before the
    /// terminal line, reported as [`ClientError::Status`] with status 200).
    pub async fn send(
        &self,
        request: &SendRequest,
        mut each: impl FnMut(&ReplyLine),
    ) -> Result<Vec<ReplyLine>, ClientError> {
        let call = async {
            let resp = self.request(Method::POST, "/v1/send", Some(to_json(request))).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::new();
            let mut lines = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|source| self.http_err(source))?;
                let Some(data) = frame.data_ref() else { continue };
                buf.extend_from_slice(data);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let raw: Vec<u8> = buf.drain(..=pos).collect();
                    let l: ReplyLine = serde_json::from_slice(&raw).map_err(|source| ClientError::Decode {
                        addr: self.addr.clone(),
                        source,
                    })?;
                    each(&l);
                    lines.push(l);
                }
            }
            if !lines.last().is_some_and(ReplyLine::is_terminal) {
                return Err(ClientError::Status {
                    addr: self.addr.clone(),
                    status,
                    body: "the reply ended without a final line".into(),
                });
            }
            Ok(lines)
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(self.timeout_err()))
    }

    /// GETs `path` and decodes its JSON body. Works with any rumor HTTP API
    /// (a bridge's too), not only the admin API.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.text(Method::GET, path, None).await?;
        let body = self.expect_ok(status, body)?;
        self.decode(&body)
    }

    /// POSTs `body` as JSON to `path` and decodes the JSON answer. Works with
    /// any rumor HTTP API, like [`AdminClient::get_json`].
    pub async fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, ClientError> {
        let (status, text) = self.text(Method::POST, path, Some(to_json(body))).await?;
        let text = self.expect_ok(status, text)?;
        self.decode(&text)
    }

    fn decode<T: DeserializeOwned>(&self, body: &str) -> Result<T, ClientError> {
        serde_json::from_str(body).map_err(|source| ClientError::Decode {
            addr: self.addr.clone(),
            source,
        })
    }

    fn expect_ok(&self, status: StatusCode, body: String) -> Result<String, ClientError> {
        if status.is_success() {
            Ok(body)
        } else {
            Err(ClientError::Status {
                addr: self.addr.clone(),
                status,
                body: body.trim().to_owned(),
            })
        }
    }

    /// A whole request and its body as text, within the timeout.
    async fn text(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, String), ClientError> {
        let call = async {
            let resp = self.request(method, path, body).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|source| self.http_err(source))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(self.timeout_err()))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.http_err(source))?;
        // The connection task ends when the response body is read or dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.as_str());
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(credential) = &self.bearer {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {credential}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("a request from a valid method, path and headers");
        sender.send_request(req).await.map_err(|source| self.http_err(source))
    }

    fn http_err(&self, source: hyper::Error) -> ClientError {
        ClientError::Http {
            addr: self.addr.clone(),
            source,
        }
    }

    fn timeout_err(&self) -> ClientError {
        ClientError::Timeout {
            addr: self.addr.clone(),
            timeout: self.timeout,
        }
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("request types always serialize")
}
