//! Fuzzes pipe frame decoding in both directions: any bytes decode to a frame or a typed
//! error, never a panic, and every frame that decodes survives an encode → decode round trip.
//! Seed corpus: fuzz/corpus/pipe_frame (replayed on stable by tests/pipe_frames.rs).
#![no_main]

use echo_runtime::pipe::{decode_agent, decode_ea, encode_agent, encode_ea};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in std::iter::once(data).chain(data.split(|&b| b == b'\n')) {
        match decode_ea(line) {
            Ok(f) => {
                let again = decode_ea(encode_ea(&f).trim_end().as_bytes());
                assert_eq!(again.ok(), Some(f));
            }
            Err(e) => {
                let _ = e.to_error_frame();
            }
        }
        match decode_agent(line) {
            Ok(f) => {
                let again = decode_agent(encode_agent(&f).trim_end().as_bytes());
                assert_eq!(again.ok(), Some(f));
            }
            Err(e) => {
                let _ = e.to_error_frame();
            }
        }
    }
});
