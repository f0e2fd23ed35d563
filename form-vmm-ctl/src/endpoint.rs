//! Where the service listens: its unix socket, `https://HOST:PORT` or `http://HOST:PORT`.

use std::fmt;
use std::path::PathBuf;

use hyper::Uri;

/// Where the service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, as parsed from an `https://` (`tls`) or `http://` URL.
    Tcp {
        authority: String,
        tls: bool,
    },
}

impl Endpoint {
    /// Parses `https://HOST:PORT` or `http://HOST:PORT` (a trailing `/` is fine; a
    /// path is not).
    pub fn from_url(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("'{text}' is not a URL ({e}); use https://HOST:PORT"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("https") => (true, 443),
            Some("http") => (false, 80),
            Some(other) => {
                return Err(format!(
                    "'{text}': the {other} scheme is not supported; use https://HOST:PORT (or http:// for a plain listener)"
                ))
            }
            None => return Err(format!("'{text}' has no scheme; use https://HOST:PORT")),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "'{text}' has a path; give only https://HOST:PORT, the API paths are added by form-vmm-ctl"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("'{text}' has no host; use https://HOST:PORT"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "'{text}' carries credentials; pass the token with --token-file instead"
            ));
        }
        let port = authority.port_u16().unwrap_or(default_port);
        Ok(Self::Tcp {
            authority: format!("{}:{port}", authority.host()),
            tls,
        })
    }

    /// The `Host` header: the socket has no host name, so a fixed one stands in.
    pub(crate) fn host_header(&self) -> &str {
        match self {
            Self::Unix(_) => "localhost",
            Self::Tcp { authority, .. } => authority,
        }
    }

    /// The host the URL names (an IPv6 address without its brackets): what the
    /// service's certificate must be valid for.
    pub fn host(&self) -> Option<&str> {
        match self {
            Self::Unix(_) => None,
            Self::Tcp { authority, .. } => {
                let (host, _port) = authority.rsplit_once(':')?;
                Some(host.trim_start_matches('[').trim_end_matches(']'))
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tcp { tls: true, .. })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "socket: {}", path.display()),
            Self::Tcp {
                authority,
                tls: true,
            } => write!(f, "url: https://{authority}"),
            Self::Tcp {
                authority,
                tls: false,
            } => write!(f, "url: http://{authority}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_urls() {
        let tcp = |authority: &str, tls| Endpoint::Tcp {
            authority: authority.into(),
            tls,
        };
        assert_eq!(
            Endpoint::from_url("http://10.0.0.5:7070").unwrap(),
            tcp("10.0.0.5:7070", false)
        );
        assert_eq!(
            Endpoint::from_url("http://gpu-host-3:7070/").unwrap(),
            tcp("gpu-host-3:7070", false)
        );
        assert_eq!(
            Endpoint::from_url("http://gpu-host-3").unwrap(),
            tcp("gpu-host-3:80", false)
        );
        assert_eq!(
            Endpoint::from_url("https://gpu-host-3:7443").unwrap(),
            tcp("gpu-host-3:7443", true)
        );
        let v6 = Endpoint::from_url("https://[::1]").unwrap();
        assert_eq!(v6, tcp("[::1]:443", true));
        assert_eq!(v6.host(), Some("::1"));
        assert_eq!(v6.to_string(), "url: https://[::1]:443");
    }

    #[test]
    fn refuses_urls_it_cannot_honour() {
        for (url, says) in [
            ("ftp://host:7070", "ftp scheme is not supported"),
            ("host:7070", "https://HOST:PORT"),
            ("http://host:7070/v1", "has a path"),
            ("http://user:pw@host:7070", "--token-file"),
            ("not a url", "not a URL"),
        ] {
            let err = Endpoint::from_url(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
