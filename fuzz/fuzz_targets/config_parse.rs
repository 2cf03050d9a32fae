//! Config parsing on untrusted bytes: as a TOML file, as etcd `key=value` pairs, and as one
//! etcd transaction applied to a live store. Must never panic; an accepted config must pass
//! its own validation. The corpus (`fuzz/corpus/config_parse/`) is replayed on stable by
//! `tests/config_fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = echo_runtime::config::exercise_untrusted(data);
});
