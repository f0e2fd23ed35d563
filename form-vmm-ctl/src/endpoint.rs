//! Where the service listens: its unix socket, or `http://HOST:PORT`.

use std::fmt;
use std::path::PathBuf;

use hyper::Uri;

/// Where the service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, as parsed from an `http://` URL.
    Tcp {
        authority: String,
    },
}

impl Endpoint {
    /// Parses `http://HOST:PORT` (a trailing `/` is fine; a path or https is not).
    pub fn from_url(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("'{text}' is not a URL ({e}); use http://HOST:PORT"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "'{text}': the {other} scheme is not supported; vmm-service speaks plain http:// (put it behind a TLS proxy for https)"
                ))
            }
            None => return Err(format!("'{text}' has no scheme; use http://HOST:PORT")),
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "'{text}' has a path; give only http://HOST:PORT, the API paths are added by form-vmm-ctl"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("'{text}' has no host; use http://HOST:PORT"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "'{text}' carries credentials; pass the token with --token-file instead"
            ));
        }
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self::Tcp {
            authority: format!("{}:{port}", authority.host()),
        })
    }

    /// The `Host` header: the socket has no host name, so a fixed one stands in.
    pub(crate) fn host_header(&self) -> &str {
        match self {
            Self::Unix(_) => "localhost",
            Self::Tcp { authority } => authority,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "socket: {}", path.display()),
            Self::Tcp { authority } => write!(f, "url: http://{authority}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_urls() {
        assert_eq!(
            Endpoint::from_url("http://10.0.0.5:7070").unwrap(),
            Endpoint::Tcp {
                authority: "10.0.0.5:7070".into()
            }
        );
        assert_eq!(
            Endpoint::from_url("http://gpu-host-3:7070/").unwrap(),
            Endpoint::Tcp {
                authority: "gpu-host-3:7070".into()
            }
        );
        assert_eq!(
            Endpoint::from_url("http://gpu-host-3").unwrap(),
            Endpoint::Tcp {
                authority: "gpu-host-3:80".into()
            }
        );
    }

    #[test]
    fn refuses_urls_it_cannot_honour() {
        for (url, says) in [
            ("https://host:7070", "https scheme is not supported"),
            ("host:7070", "http://HOST:PORT"),
            ("http://host:7070/v1", "has a path"),
            ("http://user:pw@host:7070", "--token-file"),
            ("not a url", "not a URL"),
        ] {
            let err = Endpoint::from_url(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
