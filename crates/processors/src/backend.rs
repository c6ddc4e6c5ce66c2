//! What the HTTP processors share: one backend reached over HTTP/1, a
//! bounded queue in front of its request slots, retries with backoff before
//! anything has been sent on, and a streamed body read under the
//! first-token, between-tokens and total timeouts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes as HBytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use node::ProcessError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tonic::Code;

/// Why a backend URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(pub(crate) String);

/// How long to wait for a backend and how often to try it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_concurrency: usize,
    pub(crate) max_queue: usize,
    pub(crate) first_token: Duration,
    pub(crate) idle: Duration,
    pub(crate) total: Duration,
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
}

/// One HTTP backend.
#[derive(Debug)]
pub(crate) struct Http {
    /// Its configured name, for errors and usage.
    pub(crate) name: String,
    /// Host and port, and the path of the URL.
    authority: String,
    pub(crate) path: String,
    /// For an `https://` URL: the TLS client and the name to verify.
    tls: Option<Tls>,
    api_key: Option<String>,
    pub(crate) limits: Limits,
    slots: Semaphore,
    waiting: AtomicUsize,
    /// Attempts made again after a failure.
    pub(crate) retries: AtomicU64,
}

/// The TLS client of an https backend, and the name its certificate must carry.
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A request slot held, and the place in the queue it took.
#[derive(Debug)]
pub(crate) struct Admitted<'a> {
    _slot: SemaphorePermit<'a>,
    waiting: &'a AtomicUsize,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Http {
    /// A backend at `url` (`http://host[:port]/path` or `https://...`);
    /// an https backend's certificate must chain to one of `roots` (PEM).
    pub(crate) fn new(
        name: String,
        url: &str,
        api_key: Option<String>,
        limits: Limits,
        roots: Option<&[u8]>,
    ) -> Result<Self, BadUrl> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(BadUrl(format!("{url}: give an http:// or https:// URL")));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        // `[v6]:port`, `host:port` or a bare host.
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        };
        if host.is_empty() {
            return Err(BadUrl(format!("{url}: no host")));
        }
        let authority = if host == authority {
            format!("{authority}:{}", if https { 443 } else { 80 })
        } else {
            authority.to_owned()
        };
        let tls = if https {
            let pem = roots.ok_or_else(|| BadUrl(format!("{url}: https needs CA certificates to trust")))?;
            let mut store = tokio_rustls::rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| BadUrl(format!("reading the CA certificates: {e}")))?;
                store
                    .add(cert)
                    .map_err(|e| BadUrl(format!("a CA certificate that cannot be used: {e}")))?;
            }
            if store.is_empty() {
                return Err(BadUrl("no CA certificate in the PEM given".into()));
            }
            let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                tokio_rustls::rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| BadUrl(format!("TLS: {e}")))?
            .with_root_certificates(store)
            .with_no_client_auth();
            let name = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(name.to_owned())
                .map_err(|e| BadUrl(format!("{url}: {host} is no name to verify: {e}")))?;
            Some(Tls {
                connector: TlsConnector::from(std::sync::Arc::new(config)),
                name,
            })
        } else {
            None
        };
        Ok(Self {
            name,
            authority,
            path: path.to_owned(),
            tls,
            api_key,
            slots: Semaphore::new(limits.max_concurrency.max(1)),
            waiting: AtomicUsize::new(0),
            limits,
            retries: AtomicU64::new(0),
        })
    }

    /// Waits for a request slot; refuses at once with `RESOURCE_EXHAUSTED`
    /// and a retry hint when the queue in front of them is full.
    pub(crate) async fn admit(&self) -> Result<Admitted<'_>, ProcessError> {
        let Limits {
            max_concurrency,
            max_queue,
            ..
        } = self.limits;
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= max_queue + max_concurrency {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ProcessError::new(
                Code::ResourceExhausted,
                format!(
                    "backend {} is overloaded ({max_concurrency} requests running, {max_queue} waiting); \
                     retry in about a second",
                    self.name
                ),
            ));
        }
        let waiting = &self.waiting;
        match self.slots.acquire().await {
            Ok(slot) => Ok(Admitted { _slot: slot, waiting }),
            Err(_) => {
                waiting.fetch_sub(1, Ordering::Relaxed);
                Err(ProcessError::new(Code::Unavailable, "the backend is closed"))
            }
        }
    }

    /// POSTs `body` to `{path}{suffix}` until the backend answers with a
    /// success (whose body is then read by a [`Stream`]), retrying connect
    /// errors, 429 and 5xx with backoff and jitter (or the `Retry-After`
    /// the backend asks for), within `total_end`. A non-empty `traceparent`
    /// goes as the header of that name, so a backend that traces joins the
    /// message's trace.
    pub(crate) async fn post(
        &self,
        suffix: &str,
        accept: &str,
        body: &[u8],
        traceparent: &str,
        total_end: Instant,
    ) -> Result<Response<Incoming>, ProcessError> {
        let mut attempt = 0;
        loop {
            let e = match tokio::time::timeout_at(total_end, self.attempt(suffix, accept, body, traceparent)).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(ProcessError::new(
                        Code::DeadlineExceeded,
                        format!("backend {}: the total timeout passed", self.name),
                    ));
                }
            };
            if !e.retry || attempt >= self.limits.retries {
                let why = if attempt > 0 {
                    format!("{} (after {} attempts)", e.why, attempt + 1)
                } else {
                    e.why
                };
                return Err(ProcessError::new(e.code, why));
            }
            attempt += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            let pause = e
                .retry_after
                .unwrap_or_else(|| jittered(self.limits.backoff * 2u32.pow(attempt - 1)));
            tokio::time::sleep_until((Instant::now() + pause).min(total_end)).await;
        }
    }

    /// One attempt: the response head, or why it failed and whether to retry.
    async fn attempt(
        &self,
        suffix: &str,
        accept: &str,
        body: &[u8],
        traceparent: &str,
    ) -> Result<Response<Incoming>, Attempt> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| Attempt::retry(format!("connecting to {}: {e}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => self.exchange(stream, suffix, accept, body, traceparent).await,
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.name.clone(), stream)
                    .await
                    .map_err(|e| Attempt::retry(format!("TLS with {}: {e}", self.authority)))?;
                self.exchange(stream, suffix, accept, body, traceparent).await
            }
        }
    }

    /// The request on a connection, and the answer's head.
    async fn exchange<T>(
        &self,
        io: T,
        suffix: &str,
        accept: &str,
        body: &[u8],
        traceparent: &str,
    ) -> Result<Response<Incoming>, Attempt>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| Attempt::retry(format!("HTTP handshake with {}: {e}", self.authority)))?;
        // The connection lives as long as its response body is read;
        // dropping the body (a cancelled message) closes it, which is how
        // the backend learns to stop.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::post(format!("{}{suffix}", self.path))
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .header("accept", accept);
        if let Some(key) = &self.api_key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        if !traceparent.is_empty() {
            req = req.header("traceparent", traceparent);
        }
        let req = req
            .body(Full::new(HBytes::copy_from_slice(body)))
            .map_err(|e| Attempt::fail(Code::Internal, format!("building the request: {e}")))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| Attempt::retry(format!("request to {}: {e}", self.authority)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
        let text = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(300)
                    .collect::<String>()
            })
            .unwrap_or_default();
        let why = format!("backend {} answered {status}: {text}", self.name);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(Attempt {
                retry: true,
                retry_after,
                code: if status == StatusCode::TOO_MANY_REQUESTS {
                    Code::ResourceExhausted
                } else {
                    Code::Unavailable
                },
                why,
            })
        } else if status == StatusCode::NOT_FOUND {
            Err(Attempt::fail(Code::NotFound, why))
        } else {
            Err(Attempt::fail(Code::FailedPrecondition, why))
        }
    }

    /// The error for a stream that broke: before anything was sent on, the
    /// backend is unavailable; after, the answer is incomplete.
    pub(crate) fn broken(&self, sent: bool, why: String) -> ProcessError {
        if sent {
            ProcessError::new(
                Code::Aborted,
                format!(
                    "backend {}: {why}, after part of the answer was sent; the answer is incomplete",
                    self.name
                ),
            )
        } else {
            ProcessError::new(Code::Unavailable, format!("backend {}: {why}", self.name))
        }
    }
}

/// A response body read frame by frame under the backend's timeouts: to the
/// first token (which the reader marks), between frames after it, and in
/// total.
#[derive(Debug)]
pub(crate) struct Stream<'a> {
    http: &'a Http,
    body: Incoming,
    started: Instant,
    total_end: Instant,
    first_token: Option<Instant>,
}

impl<'a> Stream<'a> {
    pub(crate) fn new(http: &'a Http, resp: Response<Incoming>, started: Instant, total_end: Instant) -> Self {
        Self {
            http,
            body: resp.into_body(),
            started,
            total_end,
            first_token: None,
        }
    }

    /// Marks the first token (from then on the between-tokens timeout
    /// applies); returns the milliseconds since the request began.
    pub(crate) fn first_token(&mut self) -> u32 {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        u32::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u32::MAX)
    }

    pub(crate) fn got_first_token(&self) -> bool {
        self.first_token.is_some()
    }

    /// The next data frame; `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Result<Option<HBytes>, ProcessError> {
        loop {
            let limit = match self.first_token {
                None => self.started + self.http.limits.first_token,
                Some(_) => Instant::now() + self.http.limits.idle,
            }
            .min(self.total_end);
            let sent = self.first_token.is_some();
            let frame = match tokio::time::timeout_at(limit, self.body.frame()).await {
                Ok(Some(Ok(f))) => f,
                Ok(Some(Err(e))) => return Err(self.http.broken(sent, format!("the stream broke: {e}"))),
                Ok(None) => return Ok(None),
                Err(_) => {
                    let what = if sent {
                        "the stream stalled; the answer sent so far is incomplete"
                    } else {
                        "no first token within the timeout"
                    };
                    return Err(ProcessError::new(
                        Code::DeadlineExceeded,
                        format!("backend {}: {what}", self.http.name),
                    ));
                }
            };
            if let Ok(data) = frame.into_data() {
                return Ok(Some(data));
            }
        }
    }
}

/// One failed attempt.
#[derive(Debug)]
struct Attempt {
    retry: bool,
    retry_after: Option<Duration>,
    code: Code,
    why: String,
}

impl Attempt {
    fn retry(why: String) -> Self {
        Self {
            retry: true,
            retry_after: None,
            code: Code::Unavailable,
            why,
        }
    }

    fn fail(code: Code, why: String) -> Self {
        Self {
            retry: false,
            retry_after: None,
            code,
            why,
        }
    }
}

/// `d` scaled by a factor in [0.5, 1.5), so that retries spread out.
fn jittered(d: Duration) -> Duration {
    // The clock's nanoseconds are random enough for spreading retries.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https_with_default_ports() {
        let limits = Limits {
            max_concurrency: 1,
            max_queue: 1,
            first_token: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            total: Duration::from_secs(1),
            retries: 0,
            backoff: Duration::from_millis(1),
        };
        let http = |url: &str| Http::new("b".into(), url, None, limits, None);
        let ok = http("http://127.0.0.1:8081/v1/").unwrap();
        assert_eq!((ok.authority.as_str(), ok.path.as_str()), ("127.0.0.1:8081", "/v1"));
        assert_eq!(http("http://localhost/v1").unwrap().authority, "localhost:80");
        assert_eq!(http("http://[::1]:9/").unwrap().authority, "[::1]:9");
        assert!(http("ftp://host/").is_err());
        assert!(http("http:///v1").is_err());
        let e = http("https://api.openai.com/v1").unwrap_err();
        assert!(e.to_string().contains("CA certificates"), "{e}");
        let none = Http::new("b".into(), "https://api.openai.com/v1", None, limits, Some(b"not pem"));
        assert!(none.is_err());
    }
}
