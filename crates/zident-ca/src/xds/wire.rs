//! A `DeltaDiscoveryResponse` written to the wire from the resources its generation holds.
//!
//! tonic's encoder writes each message whole into one buffer per stream and keeps that buffer
//! (at the size of the largest message) for as long as the stream lives. A stream's first push
//! is the whole mesh, 1.4 MB at 10,000 workloads, so every connected node cost the CA that much
//! for good. Here a response holds only references to resources the generation already keeps
//! (shared by every stream), and its gRPC frame is written out lazily in chunks of at most
//! [`CHUNK`] bytes as HTTP/2 asks for more: what a stream holds of a push is the chunks its
//! client's window lets it have in flight, and nothing once they are sent.
//!
//! The bytes are exactly what prost writes for the same message (fields in tag order, empty
//! strings left out), which the tests check.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use zident_xds::Resource;

/// The largest piece of a response handed to HTTP/2 at once.
pub(crate) const CHUNK: usize = 16 * 1024;

/// One response of a stream, not yet encoded.
#[derive(Debug, Clone)]
pub(crate) struct WireResponse {
    pub(crate) system_version_info: String,
    pub(crate) type_url: String,
    pub(crate) nonce: String,
    /// Shared with the generation that holds them.
    pub(crate) resources: Vec<Arc<Resource>>,
    pub(crate) removed: Vec<String>,
}

/// Length of a string field (`tag`), nothing when empty as proto3 writes it.
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_string(buf: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.extend_from_slice(s.as_bytes());
    }
}

impl WireResponse {
    /// Length of the `google.protobuf.Any` of `r`.
    fn any_len(&self, r: &Resource) -> usize {
        let value = if r.value.is_empty() {
            0
        } else {
            key_len(2) + encoded_len_varint(r.value.len() as u64) + r.value.len()
        };
        string_len(1, &self.type_url) + value
    }

    /// Length of the `Resource` message of `r` (version 1, resource 2, name 3).
    fn resource_len(&self, r: &Resource) -> usize {
        let any = self.any_len(r);
        string_len(1, &r.version)
            + key_len(2)
            + encoded_len_varint(any as u64)
            + any
            + string_len(3, &r.name)
    }

    /// Length of the whole message.
    pub(crate) fn encoded_len(&self) -> usize {
        let resources: usize = self
            .resources
            .iter()
            .map(|r| {
                let len = self.resource_len(r);
                key_len(2) + encoded_len_varint(len as u64) + len
            })
            .sum();
        let removed: usize = self.removed.iter().map(|n| repeated_len(6, n)).sum();
        string_len(1, &self.system_version_info)
            + resources
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce)
            + removed
    }

    /// The gRPC frame (uncompressed flag, length, message) in chunks of at most [`CHUNK`].
    pub(crate) fn into_frames(self) -> Frames {
        Frames {
            response: self,
            step: Step::Head,
            pending: BytesMut::new(),
            ready: VecDeque::new(),
            left: 0,
            scratch: Vec::new(),
        }
    }
}

/// Length of one element of a repeated string field: written even when empty.
fn repeated_len(tag: u32, s: &str) -> usize {
    key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
}

/// Where the writer is in the message.
#[derive(Debug, Clone, Copy)]
enum Step {
    Head,
    Resource(usize),
    Tail,
    Done,
}

/// The chunks of one response's frame, written as they are taken.
pub(crate) struct Frames {
    response: WireResponse,
    step: Step,
    pending: BytesMut,
    ready: VecDeque<Bytes>,
    /// Bytes of the frame not yet written, so that the last chunk is allocated at its size.
    left: usize,
    /// The small fields around each resource's value, reused.
    scratch: Vec<u8>,
}

impl Frames {
    fn put(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.pending.len() == CHUNK {
                let full = std::mem::take(&mut self.pending);
                self.ready.push_back(full.freeze());
            }
            if self.pending.capacity() == 0 {
                self.pending.reserve(self.left.clamp(1, CHUNK));
            }
            let n = (CHUNK - self.pending.len()).min(data.len());
            self.pending.put_slice(&data[..n]);
            self.left = self.left.saturating_sub(n);
            data = &data[n..];
        }
    }

    /// Writes the next part of the message into the chunks.
    fn write_step(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let r = &self.response;
        match self.step {
            Step::Head => {
                let len = r.encoded_len();
                self.left = len + 5;
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                scratch.push(0);
                scratch.extend_from_slice(&len.to_be_bytes());
                put_string(&mut scratch, 1, &r.system_version_info);
                self.step = Step::Resource(0);
                self.put(&scratch);
            }
            Step::Resource(i) if i < r.resources.len() => {
                let res = r.resources[i].clone();
                let len = r.resource_len(&res);
                encode_key(2, WireType::LengthDelimited, &mut scratch);
                encode_varint(len as u64, &mut scratch);
                put_string(&mut scratch, 1, &res.version);
                encode_key(2, WireType::LengthDelimited, &mut scratch);
                encode_varint(r.any_len(&res) as u64, &mut scratch);
                put_string(&mut scratch, 1, &r.type_url);
                if !res.value.is_empty() {
                    encode_key(2, WireType::LengthDelimited, &mut scratch);
                    encode_varint(res.value.len() as u64, &mut scratch);
                }
                self.step = Step::Resource(i + 1);
                self.put(&scratch);
                self.put(&res.value);
                scratch.clear();
                put_string(&mut scratch, 3, &res.name);
                self.put(&scratch);
            }
            Step::Resource(_) => {
                put_string(&mut scratch, 4, &r.type_url);
                put_string(&mut scratch, 5, &r.nonce);
                for name in &r.removed {
                    encode_key(6, WireType::LengthDelimited, &mut scratch);
                    encode_varint(name.len() as u64, &mut scratch);
                    scratch.extend_from_slice(name.as_bytes());
                }
                self.step = Step::Tail;
                self.put(&scratch);
            }
            Step::Tail => {
                if !self.pending.is_empty() {
                    let last = std::mem::take(&mut self.pending);
                    self.ready.push_back(last.freeze());
                }
                self.step = Step::Done;
            }
            Step::Done => {}
        }
        self.scratch = scratch;
    }
}

impl Iterator for Frames {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Some(chunk);
            }
            if matches!(self.step, Step::Done) {
                return None;
            }
            self.write_step();
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use zident_proto::xds::{DeltaDiscoveryResponse, Resource as ProtoResource};

    use super::*;

    /// What tonic would have sent for the same response.
    fn prost_frame(w: &WireResponse) -> Vec<u8> {
        let message = DeltaDiscoveryResponse {
            system_version_info: w.system_version_info.clone(),
            resources: w
                .resources
                .iter()
                .map(|r| ProtoResource {
                    version: r.version.clone(),
                    name: r.name.clone(),
                    resource: Some(prost_types::Any {
                        type_url: w.type_url.clone(),
                        value: r.value.clone(),
                    }),
                })
                .collect(),
            type_url: w.type_url.clone(),
            nonce: w.nonce.clone(),
            removed_resources: w.removed.clone(),
        };
        let body = message.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    fn resource(name: &str, len: usize) -> Arc<Resource> {
        let value = (0..len).map(|i| (i % 251) as u8).collect();
        Arc::new(Resource::new(name.to_owned(), value))
    }

    fn response(resources: Vec<Arc<Resource>>, removed: &[&str]) -> WireResponse {
        WireResponse {
            system_version_info: "42".into(),
            type_url: "type.googleapis.com/istio.workload.Address".into(),
            nonce: "42-7".into(),
            resources,
            removed: removed.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn check(w: WireResponse) -> Vec<Bytes> {
        let expected = prost_frame(&w);
        assert_eq!(w.encoded_len() + 5, expected.len(), "length");
        let chunks: Vec<Bytes> = w.into_frames().collect();
        let (last, full) = chunks.split_last().expect("a frame is never empty");
        assert!(
            full.iter().all(|c| c.len() == CHUNK),
            "every chunk but the last is full"
        );
        assert!(!last.is_empty() && last.len() <= CHUNK);
        assert_eq!(chunks.concat(), expected);
        chunks
    }

    #[test]
    fn the_same_bytes_as_prost_in_bounded_chunks() {
        // Nothing but the fields around: the first answer to a type with no resources.
        assert_eq!(check(response(Vec::new(), &[])).len(), 1);
        // Removed names only, one of them empty (a repeated string is written even so).
        check(response(Vec::new(), &["a", "", "ns/b"]));
        // Resources with an empty value, a value of one byte, one that spans many chunks,
        // and lengths whose varints change size (127/128, 16383/16384).
        check(response(
            vec![
                resource("empty", 0),
                resource("one", 1),
                resource("large", 3 * CHUNK + 17),
                resource("a", 127),
                resource("b", 128),
                resource("c", 16383),
                resource("d", 16384),
            ],
            &["gone"],
        ));
        // The size of a whole mesh's first push: many small resources.
        let many: Vec<_> = (0..5000)
            .map(|i| resource(&format!("Kubernetes//Pod/ns/p-{i}"), 180 + i % 40))
            .collect();
        let chunks = check(response(many, &[]));
        assert!(chunks.len() > 50, "written in pieces, not whole");
    }

    #[test]
    fn empty_strings_are_left_out_as_prost_leaves_them() {
        let mut w = response(vec![resource("r", 10)], &[]);
        w.system_version_info.clear();
        w.nonce.clear();
        check(w);
    }
}
