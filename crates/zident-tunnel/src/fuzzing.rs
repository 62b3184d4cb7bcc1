//! The tunnel's parsers of what a peer sends, reachable without a socket, for the fuzz targets
//! (`crates/zident-fuzzing`). Not an API.

use std::cell::RefCell;

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// The SOCKS5 greeting and request in `bytes`, answered into a sink.
pub fn socks5(bytes: &[u8]) -> Option<crate::socks5::Target> {
    RUNTIME.with(|cell| {
        let mut cell = cell.borrow_mut();
        let runtime = cell.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime")
        });
        runtime.block_on(async {
            let mut io = tokio::io::join(bytes, tokio::io::sink());
            crate::socks5::accept(&mut io).await.ok()
        })
    })
}

/// An HBONE CONNECT's `baggage` and `traceparent` values.
pub fn headers(value: &str) {
    let _ = crate::headers::Baggage::parse(value);
    let _ = crate::headers::TraceParent::parse(value);
}
