//! A blocking HTTP/1 client for the service API, over its unix socket or over TCP
//! (TLS, or plain to loopback) with a bearer token. One request per connection: the
//! CLI makes one call per run.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

use crate::endpoint::Endpoint;
use crate::error::CtlError;
use crate::tls;

/// Connecting (and the TLS handshake) is quick or it is not going to happen; don't
/// let a dead TCP peer hold the operator for the whole request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A header's value, when it is there and readable as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
    timeout: Duration,
    /// Show the time spent waiting on stderr (a terminal, never with --json).
    progress: bool,
    /// For https:// endpoints; the system's CAs when not given.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Send the token over plain http to a host other than loopback.
    allow_plain_http: bool,
}

/// How long an answer may take before the wait is shown.
const PROGRESS_AFTER: Duration = Duration::from_secs(2);

impl Client {
    pub fn new(endpoint: Endpoint, token: Option<String>, timeout: Duration) -> Self {
        Self {
            endpoint,
            token,
            timeout,
            progress: false,
            tls: None,
            allow_plain_http: false,
        }
    }

    /// The TLS configuration (trusted CAs) for an https:// endpoint.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Lets the token cross a network in clear text (`--allow-plain-http`).
    pub fn allow_plain_http(mut self, allow: bool) -> Self {
        self.allow_plain_http = allow;
        self
    }

    /// Shows, on stderr, how long the answer has been awaited, once it takes more
    /// than a moment: a large GPU VM's start pins all of its RAM first.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends one request; `path_and_query` starts with `/`. A JSON body is sent with
    /// its content type.
    pub fn send(
        &self,
        method: Method,
        path_and_query: &str,
        json: Option<Vec<u8>>,
    ) -> Result<Reply, CtlError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(CtlError::Runtime)?;
        let request = self.request(method, path_and_query, json)?;
        runtime.block_on(async {
            let answer = tokio::time::timeout(self.timeout, self.exchange(request));
            let result = if self.progress {
                with_progress(answer, self.timeout).await
            } else {
                answer.await
            };
            match result {
                Ok(result) => result,
                Err(_) => Err(CtlError::Timeout {
                    endpoint: self.endpoint.clone(),
                    waited: self.timeout,
                }),
            }
        })
    }

    fn request(
        &self,
        method: Method,
        path_and_query: &str,
        json: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, CtlError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(HOST, self.endpoint.host_header())
            .header(ACCEPT, "application/json");
        if let Some(token) = &self.token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json {
            Some(bytes) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        builder
            .body(Full::new(body))
            .map_err(|e| CtlError::Transport {
                endpoint: self.endpoint.clone(),
                reason: format!("cannot build the request for {path_and_query}: {e}"),
            })
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Reply, CtlError> {
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = self.connect(UnixStream::connect(path)).await?;
                self.over(TokioIo::new(stream), request).await
            }
            Endpoint::Tcp {
                authority,
                tls: true,
            } => {
                let stream = self.connect(TcpStream::connect(authority.as_str())).await?;
                let config = match &self.tls {
                    Some(config) => Arc::clone(config),
                    None => tls::client_config(None)?,
                };
                let host = self.endpoint.host().unwrap_or(authority);
                let secured =
                    tokio::time::timeout(CONNECT_TIMEOUT, tls::handshake(config, host, stream))
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!(
                                "no TLS handshake with {host} within {}s",
                                CONNECT_TIMEOUT.as_secs()
                            ))
                        })
                        .map_err(|reason| CtlError::Tls {
                            endpoint: self.endpoint.clone(),
                            reason,
                        })?;
                self.over(TokioIo::new(secured), request).await
            }
            Endpoint::Tcp {
                authority,
                tls: false,
            } => {
                let stream = self.connect(TcpStream::connect(authority.as_str())).await?;
                self.check_plain(&stream)?;
                self.over(TokioIo::new(stream), request).await
            }
        }
    }

    /// The token goes in clear text only to this host's loopback, where nobody on a
    /// network can read it. Checked on the connected address, so a host name that
    /// resolves to loopback passes and one that resolves elsewhere does not.
    fn check_plain(&self, stream: &TcpStream) -> Result<(), CtlError> {
        if self.token.is_none() || self.allow_plain_http {
            return Ok(());
        }
        let peer = stream.peer_addr().map_err(|e| self.unreachable(&e))?;
        if peer.ip().to_canonical().is_loopback() {
            return Ok(());
        }
        Err(CtlError::PlainToken {
            endpoint: self.endpoint.clone(),
            peer: peer.to_string(),
        })
    }

    async fn connect<S>(
        &self,
        connecting: impl std::future::Future<Output = io::Result<S>>,
    ) -> Result<S, CtlError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(self.unreachable(&e)),
            Err(_) => Err(CtlError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: format!(
                    "no connection within {}s (a firewall, or the wrong host?)",
                    CONNECT_TIMEOUT.as_secs()
                ),
            }),
        }
    }

    async fn over<I>(&self, io: I, request: Request<Full<Bytes>>) -> Result<Reply, CtlError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let transport = |e: hyper::Error| {
            CtlError::Transport {
            endpoint: self.endpoint.clone(),
            reason: match &self.endpoint {
                // A TLS listener answers plain HTTP with a TLS alert.
                Endpoint::Tcp { tls: false, .. } if e.is_parse() => format!(
                    "{e}; the answer was not HTTP: if the service listens with --tls-cert, use https://"
                ),
                _ => e.to_string(),
            },
        }
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(transport)?;
        // The connection future drives the socket; it ends when the exchange does, and
        // its own error (if any) surfaces through `send_request` as well.
        tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(transport)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(transport)?
            .to_bytes()
            .to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn unreachable(&self, error: &io::Error) -> CtlError {
        let place = match &self.endpoint {
            Endpoint::Unix(path) => path.display().to_string(),
            Endpoint::Tcp { authority, .. } => authority.clone(),
        };
        let reason = match error.kind() {
            io::ErrorKind::NotFound => format!("{place} does not exist"),
            io::ErrorKind::ConnectionRefused => match self.endpoint {
                Endpoint::Unix(_) => format!(
                    "nothing is listening on {place} (a socket left behind by a service that stopped?)"
                ),
                Endpoint::Tcp { .. } => format!("nothing is listening on {place}"),
            },
            io::ErrorKind::PermissionDenied => format!(
                "permission denied on {place}: run as root or as a member of the group that owns the socket"
            ),
            _ => format!("connecting to {place} failed: {error}"),
        };
        CtlError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }
}

/// Awaits `answer`, writing the seconds waited to stderr once a second after
/// [`PROGRESS_AFTER`], on one line that is cleared when the answer comes.
async fn with_progress<F: std::future::Future>(answer: F, limit: Duration) -> F::Output {
    use std::io::Write;
    tokio::pin!(answer);
    let start = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval_at(start + PROGRESS_AFTER, Duration::from_secs(1));
    let mut shown = false;
    let result = loop {
        tokio::select! {
            result = &mut answer => break result,
            _ = ticks.tick() => {
                shown = true;
                let mut err = std::io::stderr();
                let _ = write!(
                    err,
                    "\rwaiting for vmm-service: {}s (at most {}s)",
                    start.elapsed().as_secs(),
                    limit.as_secs()
                );
                let _ = err.flush();
            }
        }
    };
    if shown {
        let mut err = std::io::stderr();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_says_how_to_start_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let client = Client::new(Endpoint::Unix(socket.clone()), None, Duration::from_secs(5));
        let err = client.send(Method::GET, "/v1/ping", None).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CtlError::Unreachable { .. }), "{err:?}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(text.contains("vmm-service serve"), "{text}");
        assert!(text.contains(&socket.display().to_string()), "{text}");
    }
}
