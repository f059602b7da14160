//! Seeded mutation fuzzing of the readers of untrusted input: the config
//! parser and the manifest reader (what an attacker with write access to
//! the bucket, or a typo, controls). Each run mutates valid seeds (bit
//! flips, random bytes, inserted tokens, cut and repeated ranges, splices)
//! and checks that the reader never panics and that every error is one
//! line. This runs on stable, bounded in the test suite and for longer from
//! `tests/soak.sh` (VAULTIK_FUZZ_ITERS, VAULTIK_FUZZ_SEED); the same
//! properties are checked by the cargo-fuzz targets in `tests/fuzz`, which
//! need a nightly toolchain and run from the soak script when one is there.

use std::path::Path;

use crate::config::Config;
use crate::manifest::Manifest;
use crate::testhook::Rng;

/// Bytes that matter to the formats under test.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b"=",
    b"[",
    b"]",
    b"#",
    b" ",
    b"\r",
    b"\0",
    b"\xff",
    b"\"",
    b"{",
    b"}",
    b":",
    b",",
    b"[s3]",
    b"[local]",
    b"[snapshot x]",
    b"path = ",
    b"endpoint = ",
    b"18446744073709551616",
    b"-1",
    b"0",
    b"1e999",
    b"KiB",
    b"GiB",
    b"999999999999TB",
    b"..",
    b"/",
    b"\\u0000",
    b"null",
    b"\"blobs\"",
    b"\"key\"",
    b"\"size\"",
    b"\"time\"",
    b"\"id\"",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        let len = d.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = rng.next() as u8;
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(len + 1);
                d.splice(i..i, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(64)).min(len);
                d.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(64)).min(len);
                let part: Vec<u8> = d[a..b].to_vec();
                let at = rng.below(len + 1);
                d.splice(at..at, part);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(d.len() + 1);
                let from = rng.below(other.len() + 1);
                d.truncate(cut);
                d.extend_from_slice(&other[from..]);
            }
            _ => d.truncate(rng.below(len + 1)),
        }
    }
    d
}

fn iterations(default: u64) -> u64 {
    std::env::var("VAULTIK_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("VAULTIK_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001)
}

fn one_line(what: &str, input: &[u8], msg: &str) {
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "{what}: error of more than one line for input {:?}: {msg:?}",
        String::from_utf8_lossy(input)
    );
}

const CONFIG_SEEDS: &[&str] = &[
    "age_recipient = age1rswgjjpraurgu7v92eqp2jc4em8l486e9tn2dxgp89ejcpyqlc9qpcrmse\n\
     index_path = /var/lib/vaultik/index.sqlite\nhostname = web1\nchunk_size = 1MiB\n\
     blob_size_limit = 1GiB\ncompression_level = 3\nexclude = *.tmp\nkeep_latest = 7\n\
     keep_within = 30d\ngrace_period = 24h\n[s3]\nendpoint = https://s3.example.com\n\
     bucket = backups\nprefix = web1/\nregion = us-east-1\naccess_key_id = AK\n\
     secret_access_key = SK\nca_file = /etc/ssl/ca.pem\n[snapshot etc]\npath = /etc\n\
     exclude = *.log\n",
    "age_recipient = age1rswgjjpraurgu7v92eqp2jc4em8l486e9tn2dxgp89ejcpyqlc9qpcrmse\n\
     [local]\npath = /srv/store\n[snapshot home]\npath = /home\npath = /root\n",
];

#[test]
fn fuzz_config_parser() {
    let seeds: Vec<Vec<u8>> = CONFIG_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let path = Path::new("/t/vaultik.conf");
    for s in &seeds {
        assert!(Config::parse(path, std::str::from_utf8(s).expect("utf-8")).is_ok());
    }
    let mut rng = Rng::new(seed());
    let mut errors = 0u64;
    let n = iterations(20_000);
    for _ in 0..n {
        let input = mutate(&mut rng, &seeds);
        let text = String::from_utf8_lossy(&input);
        if let Err(e) = Config::parse(path, &text) {
            errors += 1;
            let msg = e.to_string();
            one_line("config", &input, &msg);
            assert!(msg.starts_with("/t/vaultik.conf"), "names the file: {msg}");
        }
    }
    // The mutations reach the error paths, not only harmless comments.
    assert!(errors > n / 10, "{errors} errors in {n} inputs");
}

#[test]
fn fuzz_manifest_reader() {
    let manifest = Manifest {
        id: "web1_etc_2026-11-23T083015Z".into(),
        hostname: "web1".into(),
        name: "etc".into(),
        time: 1_795_422_615,
        blobs: vec![
            (crate::layout::blob(&[0xab; 32]), 1234),
            (crate::layout::blob(&[0x01; 32]), 99),
        ],
        metadata_size: 4567,
        metadata_sha256: None,
        metadata_sha256_also: None,
    };
    let packed = manifest.to_bytes().expect("a small manifest");
    let json = zstd::stream::decode_all(&packed[..]).expect("a manifest is zstd");
    let key = "metadata/web1_etc_2026-11-23T083015Z/manifest.json.zst";
    assert!(Manifest::from_bytes(key, &packed).is_ok());
    let mut rng = Rng::new(seed() ^ 0x9e37_79b9);
    let n = iterations(20_000);
    let (mut ok, mut errors) = (0u64, 0u64);
    for i in 0..n {
        // Mostly mutated JSON, compressed properly (reaches the parser);
        // sometimes mutated compressed bytes (reaches the decoder).
        let (input, data) = if i % 4 == 0 {
            let d = mutate(&mut rng, std::slice::from_ref(&packed));
            (d.clone(), d)
        } else {
            let d = mutate(&mut rng, std::slice::from_ref(&json));
            let z = zstd::stream::encode_all(&d[..], 1).expect("compress in memory");
            (d, z)
        };
        match Manifest::from_bytes(key, &data) {
            Ok(m) => {
                ok += 1;
                // What is accepted is safe to use in object keys.
                assert_eq!(m.id, "web1_etc_2026-11-23T083015Z");
                for (k, _) in &m.blobs {
                    assert!(crate::layout::is_blob(k), "{k}");
                }
            }
            Err(e) => {
                errors += 1;
                let msg = e.to_string();
                one_line("manifest", &input, &msg);
                assert!(msg.contains(key), "{msg}");
            }
        }
    }
    assert!(ok > 0 && errors > 0, "{ok} accepted, {errors} refused");
}
