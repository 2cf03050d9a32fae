//! Replays the `config_parse` fuzz corpus on stable: every file goes through the fuzz target's
//! own function, which must not panic and must give a typed result.

use std::path::PathBuf;

use echo_runtime::config::{exercise_untrusted, EXAMPLE_TOML};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config_parse")
}

#[test]
fn every_corpus_file_parses_to_a_typed_result_without_panic() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("fuzz/corpus/config_parse exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "corpus too small: {files:?}");
    let (mut ok, mut refused) = (0, 0);
    for f in &files {
        let data = std::fs::read(f).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| exercise_untrusted(&data))
            .unwrap_or_else(|_| panic!("{} panicked", f.display()));
        match outcome {
            Ok(_) => ok += 1,
            Err(errors) => {
                assert!(!errors.is_empty(), "{}: Err with no error", f.display());
                for e in &errors {
                    assert!(!e.key().is_empty() && !e.to_string().is_empty());
                }
                refused += 1;
            }
        }
    }
    assert!(ok >= 1 && refused >= 1, "corpus covers both outcomes");
}

#[test]
fn corpus_example_matches_the_shipped_example() {
    let copy = std::fs::read_to_string(corpus_dir().join("example.toml")).expect("example");
    assert_eq!(
        copy, EXAMPLE_TOML,
        "refresh fuzz/corpus/config_parse/example.toml"
    );
}

/// A few thousand cheap mutations of the corpus (byte flips, splices, truncations) on stable,
/// so CI exercises the parser beyond the seeds without cargo-fuzz.
#[test]
fn mutated_corpus_never_panics() {
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir())
        .expect("corpus")
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const BYTES: &[u8] = b"=[].\"'/\n 0123456789-+_eE#{},:trueflsnaih\xff";
    for _ in 0..3_000 {
        let mut d = seeds[(next() as usize) % seeds.len()].clone();
        for _ in 0..(1 + next() % 4) {
            let pos = if d.is_empty() {
                0
            } else {
                (next() as usize) % d.len()
            };
            let b = BYTES[(next() as usize) % BYTES.len()];
            match next() % 4 {
                0 if !d.is_empty() => d[pos] = b,
                1 => d.insert(pos, b),
                2 if !d.is_empty() => {
                    d.remove(pos);
                }
                _ => d.truncate(pos),
            }
        }
        let r = std::panic::catch_unwind(|| exercise_untrusted(&d));
        assert!(r.is_ok(), "panicked on {:?}", String::from_utf8_lossy(&d));
    }
}
