//! Request bodies that say they have ended as soon as their last message is handed out.
//!
//! tonic's request body learns that its stream of messages is over only when it is asked for
//! the next one, so hyper sends a unary request as HEADERS and DATA, then, once the body
//! answers "no more", an empty DATA frame with END_STREAM. Those two are written apart: the
//! empty frame is sent from hyper's body task after the connection task has already flushed
//! the rest, one more TLS record and one more `writev` for every certificate request. A
//! 10,000-identity warm-up showed it on the agent's core: two writes per request, the second
//! 31 bytes long. [`EndsEarly`] asks the body for its next frame as soon as it hands one out,
//! so a message known to be the last goes out with END_STREAM on it, in one frame.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;
use tonic::transport::Channel;

/// The channel every CA request goes through: tonic's, with bodies that end early.
pub(crate) type CaChannel = tower::util::MapRequest<Channel, fn(Request) -> Request>;

type Request = http::Request<tonic::body::Body>;

/// `channel`, its request bodies wrapped in [`EndsEarly`].
pub(crate) fn ends_early(channel: Channel) -> CaChannel {
    tower::util::MapRequest::new(channel, wrap as fn(Request) -> Request)
}

fn wrap(request: Request) -> Request {
    request.map(|body| tonic::body::Body::new(EndsEarly::new(body)))
}

/// A body that looks one frame ahead, so it can say it has ended as it hands out its last.
pub(crate) struct EndsEarly<B> {
    inner: B,
    /// The frame read ahead, handed out next.
    ahead: Option<Result<Frame<Bytes>, Status>>,
    /// `inner` said it has no more frames.
    ended: bool,
}

impl<B> EndsEarly<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            ahead: None,
            ended: false,
        }
    }
}

impl<B> Body for EndsEarly<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(frame) = this.ahead.take() {
            return Poll::Ready(Some(frame));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(frame)) => frame,
        };
        // Look ahead. Pending leaves the waker with `inner`: hyper polls again when it wakes.
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(next)) => this.ahead = Some(next),
            Poll::Pending => {}
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let ahead = match &self.ahead {
            Some(Ok(frame)) => frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        if self.ended {
            return SizeHint::with_exact(ahead);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + ahead);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + ahead);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;

    /// One answer of a body to a poll.
    type Answer = Poll<Option<Result<Frame<Bytes>, Status>>>;

    /// A body that hands out scripted answers, one per poll.
    struct Scripted(VecDeque<Answer>);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Answer {
            match self.get_mut().0.pop_front() {
                Some(Poll::Pending) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(answer) => answer,
                None => Poll::Ready(None),
            }
        }
    }

    fn data(s: &'static str) -> Answer {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(s.as_bytes())))))
    }

    /// Polls once; the data of the frame, or what else came.
    fn next(body: &mut EndsEarly<Scripted>) -> Poll<Option<String>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(body).poll_frame(&mut cx).map(|f| {
            f.map(|f| match f {
                Ok(frame) => String::from_utf8_lossy(frame.data_ref().expect("data")).into(),
                Err(status) => format!("error: {}", status.message()),
            })
        })
    }

    /// Over the wire: the agent's certificate request reaches a TLS + HTTP/2 server (h2's own
    /// frame codec, so every frame is seen as sent) as HEADERS and one DATA frame carrying the
    /// message and END_STREAM, with no empty frame after it.
    #[tokio::test]
    async fn a_certificate_request_is_one_data_frame_that_ends_the_stream() {
        use std::sync::Arc;
        use std::time::{Duration, SystemTime};

        use futures_util::StreamExt;
        use h2::frame::Frame as H2Frame;
        use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        use tokio::io::AsyncReadExt;
        use zident_identity::{SpiffeId, TrustDomain, profile};

        use crate::ca::client::CaClient;
        use crate::ca::trust::TrustStore;
        use crate::config::{CaClientConfig, TokenSource};

        let td = TrustDomain::new("cluster.local").unwrap();
        let root_key = rcgen::KeyPair::generate().unwrap();
        let root = profile::root_params(&td, SystemTime::now(), Duration::from_secs(3600))
            .self_signed(&root_key)
            .unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(root.der(), &root_key).unwrap();
        let serving_key = rcgen::KeyPair::generate().unwrap();
        let serving = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .signed_by(&serving_key, &issuer)
            .unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![serving.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving_key.serialize_der())),
        )
        .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();

        // The server records the requests' frames up to the last that ends a stream; it never
        // answers. Requests sent together are what showed the extra frame.
        const REQUESTS: usize = 16;
        let frames = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut preface = [0u8; 24];
            tls.read_exact(&mut preface).await.unwrap();
            let mut codec: h2::Codec<_, Bytes> = h2::Codec::new(tls);
            let mut seen = Vec::new();
            while let Some(frame) = codec.next().await {
                let (kind, ends) = match frame.unwrap() {
                    H2Frame::Headers(h) => (
                        format!("HEADERS {}", u32::from(h.stream_id())),
                        h.is_end_stream(),
                    ),
                    H2Frame::Data(d) => (
                        format!(
                            "DATA {} of {} bytes",
                            u32::from(d.stream_id()),
                            d.payload().len()
                        ),
                        d.is_end_stream(),
                    ),
                    _ => continue,
                };
                seen.push(format!("{kind}{}", if ends { ", END_STREAM" } else { "" }));
                if seen.iter().filter(|f| f.ends_with("END_STREAM")).count() == REQUESTS {
                    return seen;
                }
            }
            seen
        });

        let trust = Arc::new(TrustStore::new(td, root.pem().as_bytes()).unwrap());
        let config = CaClientConfig {
            address: format!("127.0.0.1:{port}"),
            root_ca: "unused.pem".into(),
            token: TokenSource::Literal("token".into()),
            cluster_id: "Kubernetes".into(),
            request_timeout: Duration::from_secs(30),
            poll_bundle: false,
        };
        let ca = Arc::new(CaClient::new(&config, trust).unwrap());
        let id = SpiffeId::new("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let csr = "-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n";
        let requests: Vec<_> = (0..REQUESTS)
            .map(|_| {
                let (ca, id) = (ca.clone(), id.clone());
                tokio::spawn(async move {
                    ca.sign(&id, csr.into(), Duration::from_secs(60), true)
                        .await
                })
            })
            .collect();
        let seen = tokio::time::timeout(Duration::from_secs(20), frames)
            .await
            .expect("the requests' frames within 20 s")
            .unwrap();
        for r in requests {
            r.abort();
        }
        // Each stream: HEADERS, then one DATA frame with the message and END_STREAM.
        assert_eq!(seen.len(), 2 * REQUESTS, "{seen:#?}");
        for stream in seen.iter().filter_map(|f| f.strip_prefix("HEADERS ")) {
            let data: Vec<_> = seen
                .iter()
                .filter(|f| f.starts_with(&format!("DATA {stream} of ")))
                .collect();
            assert_eq!(data.len(), 1, "stream {stream}: {seen:#?}");
            assert!(data[0].ends_with(", END_STREAM"), "{seen:#?}");
            assert!(!data[0].contains(" of 0 bytes"), "{seen:#?}");
        }
    }

    #[test]
    fn a_single_message_is_known_to_be_the_last_when_it_is_handed_out() {
        let mut body = EndsEarly::new(Scripted([data("csr")].into()));
        assert!(!body.is_end_stream());
        assert_eq!(next(&mut body), Poll::Ready(Some("csr".into())));
        assert!(body.is_end_stream(), "the message goes out with END_STREAM");
        assert_eq!(body.size_hint().exact(), Some(0));
        assert_eq!(next(&mut body), Poll::Ready(None));
    }

    #[test]
    fn a_stream_of_messages_keeps_each_and_its_order_and_ends_with_the_last() {
        let script = [
            data("a"),
            data("b"),
            Poll::Pending,
            data("c"),
            Poll::Pending,
            Poll::Ready(None),
        ];
        let mut body = EndsEarly::new(Scripted(script.into()));
        assert_eq!(next(&mut body), Poll::Ready(Some("a".into())));
        assert!(
            !body.is_end_stream(),
            "b was read ahead and is still to come"
        );
        assert_eq!(next(&mut body), Poll::Ready(Some("b".into())));
        assert!(!body.is_end_stream(), "the stream did not say it has ended");
        assert_eq!(next(&mut body), Poll::Pending);
        assert_eq!(next(&mut body), Poll::Ready(Some("c".into())));
        assert!(
            !body.is_end_stream(),
            "its end was not known when c was handed out"
        );
        assert_eq!(next(&mut body), Poll::Ready(None));
        assert!(body.is_end_stream());
    }

    #[test]
    fn an_error_read_ahead_is_handed_out_after_the_message_before_it() {
        let script = [data("a"), Poll::Ready(Some(Err(Status::cancelled("gone"))))];
        let mut body = EndsEarly::new(Scripted(script.into()));
        assert_eq!(next(&mut body), Poll::Ready(Some("a".into())));
        assert!(!body.is_end_stream());
        assert_eq!(next(&mut body), Poll::Ready(Some("error: gone".into())));
    }
}
