//! Any bytes as the body of a Raft RPC (AppendEntries, vote, a snapshot chunk) or of its answer,
//! or as a vote's contact header: decoded without a panic; a snapshot chunk that decodes encodes
//! back to the same request; a contact header that reads back writes back the same.
#![no_main]

use clusterd::model::NodeId;
use clusterd::raft::TypeConfig;
use clusterd::raft::network::{
    contact_header, decode_snapshot_chunk, encode_snapshot_chunk, parse_contact,
};
use libfuzzer_sys::fuzz_target;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotResponse, VoteRequest, VoteResponse,
};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(data);
    let _ = serde_json::from_slice::<VoteRequest<NodeId>>(data);
    let _ =
        serde_json::from_slice::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(data);
    let _ = serde_json::from_slice::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(data);
    let _ = serde_json::from_slice::<
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    >(data);
    if let Ok(header) = std::str::from_utf8(data)
        && let Some((term, _)) = header.split_once(' ')
        && let Ok(term) = term.parse::<u64>()
        && let Some(since) = parse_contact(header, term)
    {
        assert_eq!(
            parse_contact(&contact_header(term, since), term),
            Some(since)
        );
    }
    if let Ok(req) = decode_snapshot_chunk(data) {
        let again = encode_snapshot_chunk(&req).expect("a decoded chunk encodes");
        let back = decode_snapshot_chunk(&again).expect("an encoded chunk decodes");
        assert_eq!(back.data, req.data);
        assert_eq!(back.offset, req.offset);
    }
});
