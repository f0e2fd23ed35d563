//! Where the API listens: a unix socket with restricted permissions (the default), or
//! TCP behind a bearer token.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use axum::Router;

use super::auth::require_token;

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
}

/// Serves `router` until the process ends.
pub async fn serve(
    router: Router,
    listen: &Listen,
    token_file: Option<&Path>,
    socket_mode: u32,
) -> Result<(), ListenError> {
    match listen {
        Listen::Unix(path) => {
            let listener = bind_unix(path, socket_mode).await?;
            log::info!("listening on unix:{}", path.display());
            axum::serve(listener, router)
                .await
                .map_err(|source| ListenError::Io {
                    what: "serving on",
                    path: path.clone(),
                    source,
                })
        }
        Listen::Tcp(address) => {
            let token = read_token(token_file.ok_or(ListenError::TokenRequired)?)?;
            let router = router.layer(axum::middleware::from_fn_with_state(
                Arc::new(token),
                require_token,
            ));
            let io = |what, source| ListenError::Io {
                what,
                path: PathBuf::from(address),
                source,
            };
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| io("binding", e))?;
            log::info!("listening on tcp:{address}");
            axum::serve(listener, router)
                .await
                .map_err(|e| io("serving on", e))
        }
    }
}

async fn bind_unix(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, ListenError> {
    let io = |what, source| ListenError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
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
