//! Arbitrary bytes as `echo.v1` envelopes, through the wire → machine conversion and back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    echo_runtime::link::convert::exercise_untrusted(data);
});
