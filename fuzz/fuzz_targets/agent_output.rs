//! Any bytes as what an outside program or server answers: a fence agent's or webhook's reply
//! (shortened for logs and the history), a webhook template, `postqueue -j` output, a
//! certificate's expiry. No panic, and a shortened reply stays within its bound.
#![no_main]

use clusterd_fencing::agent::{MAX_REPLY, PowerAction, bounded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let cut = bounded(&text);
    assert!(cut.len() <= MAX_REPLY + 40, "{} bytes", cut.len());
    let _ = clusterd_fencing::webhook::render(&text, "mx2", PowerAction::Off);
    let _ = clusterd::health::probe::queue_depth(data);
    if data.len() >= 17 {
        let n = |b: &[u8]| i64::from_le_bytes(b.try_into().expect("8 bytes"));
        let _ = clusterd::health::probe::expiry_warning(
            n(&data[..8]),
            std::time::Duration::from_secs(u64::from(data[16]) * 86_400),
            n(&data[8..16]),
        );
    }
});
