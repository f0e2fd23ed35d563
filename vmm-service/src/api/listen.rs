//! Where the API listens: a unix socket with restricted permissions (the default),
//! TCP behind a bearer token (TLS, or plain text on loopback unless the operator
//! accepts plain text on a network), or several of them. Each listener holds a
//! bounded number of connections and closes those that send nothing in time (a TLS
//! handshake included), so idle clients cannot use up the service's descriptors.
//! A TCP listener also caps the connections of each peer, so one client cannot
//! hold all of them before ever showing a token.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::{Extension, Router};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::auth::require_token;
use super::peer_cap::PeerCap;
use super::tls::{self, TlsError, TlsFiles};

pub const DEFAULT_SOCKET: &str = "/run/form-vmm/service.sock";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("'{path}' is not an absolute socket path"));
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(address) = text.strip_prefix("tcp:") {
            Ok(Self::Tcp(address.to_string()))
        } else {
            Err(format!("'{text}' is neither unix:/PATH nor tcp:HOST:PORT"))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "listening on TCP needs --token-file: without a token anyone who reaches the port runs VMs"
    )]
    TokenRequired,
    #[error("token file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists and another service answers on it; stop that one first")]
    InUse { path: PathBuf },
    #[error(
        "tcp:{address} is not a loopback address: the bearer token and every request would cross the network in clear text; serve TLS with --tls-cert and --tls-key, or listen on 127.0.0.1 or ::1 and reach it through an SSH tunnel, or pass --allow-plain-tcp to accept the risk"
    )]
    PlainTcp { address: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// How the listeners treat connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The bearer token file TCP listeners need.
    pub token_file: Option<PathBuf>,
    /// Permissions of unix sockets.
    pub socket_mode: u32,
    /// Connections each listener holds at once; more are answered
    /// `503 too_many_connections` and closed.
    pub max_connections: usize,
    /// Connections one peer (an IPv4 address, an IPv6 /64) holds at once on each
    /// TCP listener; more are answered `503 too_many_connections_from_peer` and
    /// closed. Loopback peers and unix sockets have only `max_connections`.
    pub max_connections_per_peer: usize,
    /// How long a connection may take to send a request's headers, counted from
    /// when it opens or its previous answer was sent: an idle connection (a
    /// keep-alive one too) is closed after this.
    pub header_timeout: Duration,
    /// Plain-text TCP on an address other than loopback.
    pub allow_plain_tcp: bool,
    /// TLS on every TCP listener: with it, they speak nothing else.
    pub tls: Option<TlsFiles>,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 32;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            token_file: None,
            socket_mode: 0o660,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            allow_plain_tcp: false,
            tls: None,
        }
    }
}

/// Which listener a request came through; the routes read it (`force` binding is
/// only for the local socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp,
}

/// Serves `router` on every listener until the process ends (or one fails).
/// Every listener is bound before any serves, so a bad address fails the start.
pub async fn serve(
    router: Router,
    listens: &[Listen],
    options: &ServeOptions,
) -> Result<(), ListenError> {
    // Before binding anything: a bad certificate fails the start, not the first client.
    let acceptor = options.tls.as_ref().map(tls::load).transpose()?;
    if acceptor.is_some() && !listens.iter().any(|l| matches!(l, Listen::Tcp(_))) {
        log::warn!("--tls-cert and --tls-key apply to TCP listeners, and there is none");
    }
    let mut bound = Vec::new();
    for listen in listens {
        match listen {
            Listen::Unix(path) => {
                let listener = bind_unix(path, options.socket_mode).await?;
                let router = router.clone().layer(Extension(Transport::Unix));
                bound.push((
                    Bound::Unix(listener),
                    router,
                    format!("unix:{}", path.display()),
                ));
            }
            Listen::Tcp(address) => {
                let token = read_token(
                    options
                        .token_file
                        .as_deref()
                        .ok_or(ListenError::TokenRequired)?,
                )?;
                let io = |what, source| ListenError::Io {
                    what,
                    path: PathBuf::from(address),
                    source,
                };
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(|e| io("binding", e))?;
                let local = listener.local_addr().map_err(|e| io("binding", e))?;
                if !local.ip().is_loopback() && acceptor.is_none() && !options.allow_plain_tcp {
                    return Err(ListenError::PlainTcp {
                        address: address.clone(),
                    });
                }
                let router = router
                    .clone()
                    .layer(axum::middleware::from_fn_with_state(
                        Arc::new(token),
                        require_token,
                    ))
                    .layer(Extension(Transport::Tcp));
                match &acceptor {
                    Some(acceptor) => bound.push((
                        Bound::Tls(listener, acceptor.clone()),
                        router,
                        format!("tcp:{local} (TLS)"),
                    )),
                    None => bound.push((Bound::Tcp(listener), router, format!("tcp:{local}"))),
                }
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    let limits = Limits::from(options);
    for (listener, router, name) in bound {
        let per_peer = match listener {
            Bound::Unix(_) => String::new(),
            Bound::Tcp(_) | Bound::Tls(..) => {
                format!(", {} per peer", limits.max_connections_per_peer)
            }
        };
        log::info!(
            "listening on {name} (at most {} connections{per_peer}, {:?} to send a request)",
            limits.max_connections,
            limits.header_timeout
        );
        tasks.spawn(accept_loop(listener, router, limits));
    }
    match tasks.join_next().await {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(ListenError::Io {
            what: "serving on",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        }),
        Some(Ok(Ok(()))) | None => Ok(()),
    }
}

enum Bound {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
    Tls(tokio::net::TcpListener, tokio_rustls::TlsAcceptor),
}

impl Bound {
    /// The next connection, with its peer's address on TCP.
    async fn accept(&self) -> std::io::Result<(Stream, Option<IpAddr>)> {
        match self {
            Self::Unix(listener) => listener
                .accept()
                .await
                .map(|(s, _)| (Stream::Unix(s), None)),
            Self::Tcp(listener) | Self::Tls(listener, _) => listener
                .accept()
                .await
                .map(|(s, peer)| (Stream::Tcp(s), Some(peer.ip()))),
        }
    }

    fn tls(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        match self {
            Self::Tls(_, acceptor) => Some(acceptor),
            Self::Unix(_) | Self::Tcp(_) => None,
        }
    }
}

enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl Stream {
    /// Whatever of `bytes` the socket takes now, without waiting, unencrypted.
    fn try_write(&self, bytes: &[u8]) {
        let _ = match self {
            Self::Unix(s) => s.try_write(bytes),
            Self::Tcp(s) => s.try_write(bytes),
            Self::Tls(_) => Ok(0),
        };
    }

    /// The stream to serve HTTP on: for a TLS listener, once the handshake is done
    /// within `within`.
    async fn secured(
        self,
        acceptor: Option<&tokio_rustls::TlsAcceptor>,
        within: Duration,
    ) -> Option<Self> {
        match (self, acceptor) {
            (Self::Tcp(tcp), Some(acceptor)) => tls::handshake(acceptor, tcp, within)
                .await
                .map(|s| Self::Tls(Box::new(s))),
            (stream, _) => Some(stream),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The answer to a connection over the listener's cap, written without waiting and
/// closed.
fn over_capacity(max: usize) -> Vec<u8> {
    refusal(
        "too_many_connections",
        &format!("this listener holds its maximum of {max} connections (--max-connections); retry shortly, and close connections you do not use"),
    )
}

/// The answer to a connection over its peer's cap.
fn over_peer_capacity(max: usize) -> Vec<u8> {
    refusal(
        "too_many_connections_from_peer",
        &format!("your address already holds {max} connections to this listener, the most one peer may (--max-connections-per-peer {max}); close idle connections and retry, or, if many clients share this address, ask the operator to raise --max-connections-per-peer"),
    )
}

/// A 503 with a JSON error body; `message` must need no JSON escaping.
fn refusal(code: &str, message: &str) -> Vec<u8> {
    let body = format!("{{\"error\":{{\"code\":\"{code}\",\"message\":\"{message}\"}}}}");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What `accept_loop` needs of [`ServeOptions`].
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    max_connections_per_peer: usize,
    header_timeout: Duration,
}

impl From<&ServeOptions> for Limits {
    fn from(options: &ServeOptions) -> Self {
        Self {
            max_connections: options.max_connections,
            max_connections_per_peer: options.max_connections_per_peer,
            header_timeout: options.header_timeout,
        }
    }
}

async fn accept_loop(listener: Bound, router: Router, limits: Limits) -> Result<(), ListenError> {
    let header_timeout = limits.header_timeout;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let peers = PeerCap::new(limits.max_connections_per_peer);
    let listener_full = over_capacity(limits.max_connections);
    let peer_full = over_peer_capacity(limits.max_connections_per_peer);
    // A TLS client gets no 503: it would take a handshake, which is the work the
    // caps are there to refuse. It sees the connection closed.
    let refuse = |stream: Stream, answer: &[u8]| {
        if listener.tls().is_none() {
            stream.try_write(answer);
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or a connection reset before
                // it was accepted: not the listener's end. Pause so a descriptor
                // shortage does not spin.
                log::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The peer first: a peer over its own cap is told so (its own connections
        // are what it should close), and takes no listener slot.
        let peer_slot = match peer {
            Some(ip) => match peers.try_acquire(ip) {
                Some(slot) => Some(slot),
                None => {
                    refuse(stream, &peer_full);
                    continue;
                }
            },
            None => None,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refuse(stream, &listener_full);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let acceptor = listener.tls().cloned();
        tokio::spawn(async move {
            // The slots are held through the handshake, and the handshake gets the
            // header timeout, so silent clients cannot pile up ahead of the caps.
            let Some(stream) = stream.secured(acceptor.as_ref(), header_timeout).await else {
                drop((slot, peer_slot));
                return;
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection =
                builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                log::debug!("connection ended: {e}");
            }
            drop((slot, peer_slot));
        });
    }
}

async fn bind_unix(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, ListenError> {
    let io = |what, source| ListenError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
            // Reachable by the socket's group whatever the service's umask (0077).
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .map_err(|e| io("setting the permissions of the directory of", e))?;
        }
    }
    if path.exists() {
        // A live service answers; a stale socket from a killed one does not.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ListenError::InUse {
                path: path.to_path_buf(),
            });
        }
        fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| io("binding", e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io("setting the permissions of", e))?;
    Ok(listener)
}

fn read_token(path: &Path) -> Result<String, ListenError> {
    let fail = |reason: String| ListenError::Token {
        path: path.to_path_buf(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(fail(
            "is readable by group or others; chmod 600 it".to_string(),
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = text.trim_end_matches(['\n', '\r']).to_string();
    if token.len() < 16 {
        return Err(fail(
            "holds fewer than 16 characters; use a long random token".to_string(),
        ));
    }
    Ok(token)
}
