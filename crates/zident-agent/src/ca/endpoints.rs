//! The CA's addresses: `CA_ADDRESS` may list several replicas (`a:15012,b:15012`), and a name
//! that resolves to several addresses counts as one replica per address. Requests go round
//! robin over the replicas that answer; a replica found unreachable is set aside for a while
//! and the request goes straight on to the next, so a replica that refuses connections costs
//! a request nothing but a refused connect.

#[cfg(test)]
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tonic::transport::Endpoint as TonicEndpoint;

use crate::ca::ends_early::{CaChannel, ends_early};

/// Why a CA client could not be made from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum CaAddressError {
    /// The address has no port.
    #[error("CA_ADDRESS {0:?} must be host:port (for example zident-ca.example:15012)")]
    NotHostPort(String),
    /// The host is not a DNS name or an IP address.
    #[error("CA_ADDRESS {address:?}: host {host:?} is not a DNS name or IP address: {message}")]
    BadHost {
        /// The address as given.
        address: String,
        /// Its host part.
        host: String,
        /// What is wrong with it.
        message: String,
    },
    /// TLS could not be set up.
    #[error("TLS to the CA: {0}")]
    Tls(rustls::Error),
}

/// How long a replica found unreachable is tried only after the others.
pub const SET_ASIDE: Duration = Duration::from_secs(5);

/// One replica.
pub struct Endpoint {
    /// Where it is dialled, `ip:port` or `host:port`.
    pub address: String,
    /// The name its TLS certificate must hold.
    pub name: ServerName<'static>,
    /// Its connection.
    pub channel: CaChannel,
    set_aside_until: Mutex<Option<Instant>>,
    requests: AtomicU64,
    last_error: Mutex<Option<(SystemTime, String)>>,
}

/// What `/debug/connections` shows of one replica.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    /// Where it is dialled.
    pub address: String,
    /// Whether requests go to it (false while set aside after it was found unreachable).
    pub in_use: bool,
    /// Requests sent to it.
    pub requests: u64,
    /// The last failure to reach it.
    pub last_error: Option<String>,
    /// When (RFC 3339).
    pub last_error_at: Option<String>,
}

/// Every replica, and whose turn it is.
pub struct Endpoints {
    list: Vec<Endpoint>,
    next: AtomicUsize,
}

/// `host` and `port` of `host:port` or `[v6]:port`.
pub(crate) fn split_host_port(address: &str) -> Option<(String, u16)> {
    if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host.to_owned(), port.parse().ok()?));
    }
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

impl Endpoints {
    /// The replicas `addresses` names (comma-separated `host:port`), each dialled with `tls`.
    /// A DNS name is resolved now, one replica per address it resolves to; a name that does
    /// not resolve yet is kept as is and resolved at each connection.
    pub fn new(
        addresses: &str,
        tls: tokio_rustls::TlsConnector,
        request_timeout: Duration,
    ) -> Result<Self, CaAddressError> {
        let given: Vec<&str> = addresses
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        if given.is_empty() {
            return Err(CaAddressError::NotHostPort(addresses.to_owned()));
        }
        // With several replicas, one that does not answer must not hold a request long.
        let connect_timeout = Duration::from_secs(if given.len() > 1 { 1 } else { 5 });
        let mut list = Vec::new();
        for a in given {
            let a = a.trim_start_matches("https://").trim_end_matches('/');
            let (host, port) =
                split_host_port(a).ok_or_else(|| CaAddressError::NotHostPort(a.to_owned()))?;
            let name = ServerName::try_from(host.clone()).map_err(|e| CaAddressError::BadHost {
                address: a.to_owned(),
                host: host.clone(),
                message: e.to_string(),
            })?;
            let dial: Vec<String> = match host.parse::<std::net::IpAddr>() {
                Ok(_) => vec![a.to_owned()],
                Err(_) => match std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)) {
                    Ok(resolved) => {
                        let mut v: Vec<String> = resolved.map(|s| s.to_string()).collect();
                        v.dedup();
                        if v.is_empty() { vec![a.to_owned()] } else { v }
                    }
                    Err(_) => vec![a.to_owned()],
                },
            };
            for address in dial {
                let channel = channel(
                    &address,
                    &name,
                    tls.clone(),
                    connect_timeout,
                    request_timeout,
                )?;
                list.push(Endpoint {
                    address,
                    name: name.clone(),
                    channel,
                    set_aside_until: Mutex::new(None),
                    requests: AtomicU64::new(0),
                    last_error: Mutex::new(None),
                });
            }
        }
        // Agents start at different replicas, so that a mesh's agents spread over them.
        let start = std::process::id() as usize % list.len();
        Ok(Self {
            list,
            next: AtomicUsize::new(start),
        })
    }

    /// The replicas in the order to try them for the next request: round robin over those in
    /// use, then those set aside.
    pub fn order(&self) -> Vec<&Endpoint> {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let (mut ready, mut aside): (Vec<&Endpoint>, Vec<&Endpoint>) = (0..n)
            .map(|i| &self.list[(start + i) % n])
            .partition(|e| e.in_use(now));
        ready.append(&mut aside);
        ready
    }

    /// The replica dialled at `address`, without taking a turn of the round robin.
    pub fn find(&self, address: &str) -> Option<&Endpoint> {
        self.list.iter().find(|e| e.address == address)
    }

    /// The first replica.
    pub fn first(&self) -> &Endpoint {
        &self.list[0]
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// What `/debug/connections` shows.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = Instant::now();
        self.list
            .iter()
            .map(|e| {
                let last = e
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                EndpointStatus {
                    address: e.address.clone(),
                    in_use: e.in_use(now),
                    requests: e.requests.load(Ordering::Relaxed),
                    last_error: last.as_ref().map(|l| l.1.clone()),
                    last_error_at: last.map(|l| zident_identity::rfc3339(l.0)),
                }
            })
            .collect()
    }
}

impl Endpoint {
    fn in_use(&self, now: Instant) -> bool {
        self.set_aside_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|until| now >= until)
    }

    /// Counts a request sent to it.
    pub fn sent(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// It answered: in use again.
    pub fn answered(&self) {
        *self
            .set_aside_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// It could not be reached: tried after the others for [`SET_ASIDE`].
    pub fn unreachable(&self, why: &str) {
        *self
            .set_aside_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + SET_ASIDE);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((SystemTime::now(), why.to_owned()));
    }
}

/// A lazily connecting channel to `address`, whose TLS is done here (so the trust follows
/// the bundle) against `name`.
fn channel(
    address: &str,
    name: &ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<CaChannel, CaAddressError> {
    let (dial, name) = (address.to_owned(), name.clone());
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let (tls, name, dial) = (tls.clone(), name.clone(), dial.clone());
        async move {
            let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&dial))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no TCP connection to {dial} within {connect_timeout:?}"),
                    )
                })??;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let endpoint = TonicEndpoint::from_shared(format!("http://{address}"))
        .map_err(|e| CaAddressError::BadHost {
            address: address.to_owned(),
            host: address.to_owned(),
            message: e.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    Ok(ends_early(endpoint.connect_with_connector_lazy(connector)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let hp = |a: &str| split_host_port(a);
        assert_eq!(hp("localhost:15012"), Some(("localhost".into(), 15012)));
        assert_eq!(
            hp("istiod.istio-system.svc:15012"),
            Some(("istiod.istio-system.svc".into(), 15012))
        );
        assert_eq!(hp("[::1]:15012"), Some(("::1".into(), 15012)));
        assert_eq!(hp("localhost"), None);
        assert_eq!(hp(":15012"), None);
    }

    #[tokio::test]
    async fn a_list_and_a_name_with_several_addresses_are_one_replica_each() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
        let e = Endpoints::new(
            " 127.0.0.1:1, 127.0.0.2:2 ,",
            tls.clone(),
            Duration::from_secs(1),
        )
        .unwrap();
        let addresses: Vec<String> = e.status().into_iter().map(|s| s.address).collect();
        assert_eq!(addresses, ["127.0.0.1:1", "127.0.0.2:2"]);
        // Round robin: consecutive requests start at different replicas.
        let a = e.order()[0].address.clone();
        let b = e.order()[0].address.clone();
        assert_ne!(a, b);
        // One set aside goes last, and shows as not in use.
        e.list[0].unreachable("connection refused");
        for _ in 0..3 {
            assert_eq!(e.order()[0].address, "127.0.0.2:2");
        }
        assert!(!e.status()[0].in_use);
        assert_eq!(
            e.status()[0].last_error.as_deref(),
            Some("connection refused")
        );
        assert!(Endpoints::new(" , ", tls, Duration::from_secs(1)).is_err());
    }
}
