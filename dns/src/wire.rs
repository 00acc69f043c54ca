//! One DNS message in, its encoded response out, whatever the transport.
//!
//! Owns parsing a raw message into a hickory `Request`, FORMERR for a message whose header is
//! readable but whose body is not, silence for one whose header is not (or that is itself a
//! response, which could loop between servers), and encoding the handler's response under the
//! transport's size limit (UDP: the OPT's payload size, or 512; TCP: 65535). It must not do socket
//! I/O (`udp` and `tcp` do) or decide answers (the `Handler` does).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_net::NetError;
use hickory_net::runtime::TokioTime;
use hickory_net::xfer::Protocol;
use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tracing::{debug, error};

use crate::server::Handler;

/// An encoded response and where it goes.
pub(crate) type Reply = (Vec<u8>, SocketAddr);

/// Encoded responses waiting to be written.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outbox(Arc<Mutex<Vec<Reply>>>);

impl Outbox {
    pub(crate) fn push(&self, wire: Vec<u8>, dst: SocketAddr) {
        // A poisoned lock only means a panic elsewhere mid-push; the list is still usable.
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((wire, dst));
    }

    /// How many responses are queued.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A copy of the response queued after the first `before`, if exactly one was.
    pub(crate) fn only_since(&self, before: usize) -> Option<Vec<u8>> {
        let queued = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (queued.len() == before + 1).then(|| queued[before].0.clone())
    }

    /// Everything queued so far, leaving the outbox empty.
    pub(crate) fn take(&self) -> Vec<Reply> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Answers one message from `src` into `outbox` (nothing, or one response).
pub(crate) async fn answer_message(
    handler: &Handler,
    bytes: &[u8],
    src: SocketAddr,
    protocol: Protocol,
    outbox: &Outbox,
) {
    if let Some(request) = parse_query(handler, bytes, src, protocol, outbox) {
        handler
            .handle_request::<_, TokioTime>(&request, collector(outbox, src, protocol))
            .await;
    }
}

/// Whether a name in the question section uses a compression pointer. The response echoes
/// the question section's bytes as received, where a pointer into the header (or anywhere its
/// bytes differ) would land in the response's own header: no client compresses its question
/// (the first name of a message has nothing before it to point to), and a query with several
/// questions may be refused anyway (RFC 9619), so such a query gets FORMERR.
fn question_compressed(bytes: &[u8]) -> bool {
    let questions = bytes
        .get(4..6)
        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
    let mut at = HEADER_BYTES;
    for _ in 0..questions {
        loop {
            let Some(&len) = bytes.get(at) else {
                return false;
            };
            if len & 0xC0 != 0 {
                return true;
            }
            at += usize::from(len) + 1;
            if len == 0 {
                break;
            }
        }
        at += 4; // type and class
    }
    false
}

/// Length of a DNS header.
const HEADER_BYTES: usize = 12;

/// Parses one message from `src` into a request for the handler. A message whose header is
/// readable but whose body is not (or whose question section is compressed) gets FORMERR (queued
/// into `outbox`); a response, or a message without a readable header, gets nothing. `None`
/// unless there is a query to answer.
pub(crate) fn parse_query(
    handler: &Handler,
    bytes: &[u8],
    src: SocketAddr,
    protocol: Protocol,
    outbox: &Outbox,
) -> Option<Request> {
    let parsed = if question_compressed(bytes) {
        Err("a question's name is compressed".to_string())
    } else {
        Request::from_bytes(bytes.to_vec(), src, protocol).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(request) => (request.metadata.message_type != MessageType::Response).then_some(request),
        Err(e) => {
            let mut decoder = BinDecoder::new(bytes);
            let header = Header::read(&mut decoder).ok()?;
            if header.metadata.message_type == MessageType::Response {
                return None;
            }
            debug!(%src, "dns malformed query: {e}");
            handler.count_malformed();
            let reply = Message::error_msg(
                header.metadata.id,
                header.metadata.op_code,
                ResponseCode::FormErr,
            );
            if let Ok(wire) = reply.to_vec() {
                outbox.push(wire, src);
            }
            None
        }
    }
}

/// A response handler that encodes into `outbox` for `dst`.
pub(crate) fn collector(
    outbox: &Outbox,
    dst: SocketAddr,
    protocol: Protocol,
) -> impl ResponseHandler {
    Collector {
        outbox: outbox.clone(),
        dst,
        protocol,
    }
}

/// Encodes the handler's response into the outbox.
#[derive(Debug, Clone)]
struct Collector {
    outbox: Outbox,
    dst: SocketAddr,
    protocol: Protocol,
}

#[async_trait::async_trait]
impl ResponseHandler for Collector {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // The handler has already made sure UDP records fit; this limit is the backstop.
        let limit = match self.protocol {
            Protocol::Udp => response.edns().map_or(512, Edns::max_payload),
            _ => u16::MAX,
        };
        let id = response.metadata().id;
        let mut wire = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut wire);
        encoder.set_max_size(limit);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(e) => {
                error!("dns response could not be encoded, answering SERVFAIL: {e}");
                let mut meta = Metadata::new(id, MessageType::Response, OpCode::Query);
                meta.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata: meta,
                    counts: HeaderCounts::default(),
                };
                wire.clear();
                let mut encoder = BinEncoder::new(&mut wire);
                header.emit(&mut encoder)?;
                ResponseInfo::from(header)
            }
        };
        self.outbox.push(wire, self.dst);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query header with `questions` questions, then `rest`.
    fn query(questions: u8, rest: &[u8]) -> Vec<u8> {
        let mut q = vec![0x42, 0x42, 0x01, 0x00, 0x00, questions, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(rest);
        q
    }

    #[test]
    fn a_pointer_in_any_question_is_found_and_plain_names_pass() {
        let plain = b"\x04imap\x04mail\x00\x00\x01\x00\x01";
        assert!(!question_compressed(&query(1, plain)));
        assert!(question_compressed(&query(1, b"\xc0\x02\x00\x01\x00\x01")));
        assert!(question_compressed(&query(
            1,
            b"\x04imap\xc0\x02\x00\x01\x00\x01"
        )));
        // The second question points back: found too.
        let mut two = plain.to_vec();
        two.extend_from_slice(b"\x03pop\xc0\x0c\x00\x01\x00\x01");
        assert!(question_compressed(&query(2, &two)));
        // Truncated or empty: left to the parser.
        assert!(!question_compressed(&query(1, b"\x04im")));
        assert!(!question_compressed(&query(0, b"")));
        assert!(!question_compressed(&[0x42]));
    }
}
