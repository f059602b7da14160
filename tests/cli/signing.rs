//! Signed snapshots (issue 33): each host signs its manifests (and through
//! them its metadata) with a key of its own; a reader that names trusted
//! signers takes no other snapshot for `latest`, a restore or retention,
//! and says which it refused and why.

use std::path::PathBuf;

use crate::core::restored;
use crate::util::{Backend, Env, stderr};

/// Where the store's objects are on disk (s3s-fs serves a directory).
fn object_path(env: &Env, key: &str) -> PathBuf {
    match env.backend {
        Backend::Local => env.store_dir().join(key),
        _ => env.store_dir().join("host1").join(key),
    }
}

fn list_json(env: &Env, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["snapshot", "list", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str::<serde_json::Value>(&env.ok(&args))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The key this host signs with, as `store info` says.
fn host_key(env: &Env) -> String {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["store", "info", "--json"])).unwrap();
    v["host_signing_key"].as_str().unwrap().to_string()
}

/// Restore `snapshot` trusting `key`: the output.
fn restore(env: &Env, snapshot: &str, key: &str, to: &str) -> std::process::Output {
    let target = env.path().join(to);
    env.cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["restore", snapshot, "--target"])
        .arg(&target)
        .args(["--signer", key])
        .output()
        .unwrap()
}

both!(
    forged_unsigned_and_swapped_snapshots_are_refused_by_name,
    |b| {
        let mut env = Env::new(b);
        env.random_files(3, 100_000, 5);
        env.write_config();
        env.create();
        let key = host_key(&env);
        assert!(key.starts_with("ed25519:") && key.len() == 8 + 64, "{key}");
        env.settle();
        std::fs::write(env.src().join("second"), b"the second snapshot").unwrap();
        env.create();
        let good = env.snapshot_ids()[1].clone();
        let list = list_json(&env, &[]);
        assert!(
            list.iter()
                .all(|s| s["signed"] == "yes" && s["signer"] == key.as_str()),
            "{list:?}"
        );

        // Another key (a forger with write access and the public recipient):
        // the host's key set aside, a backup makes and signs with a new one.
        let state = env.index_path().parent().unwrap().to_path_buf();
        let kept = std::fs::read(state.join("signing.key")).unwrap();
        std::fs::remove_file(state.join("signing.key")).unwrap();
        env.settle();
        std::fs::write(env.src().join("forged"), b"planted").unwrap();
        env.create();
        let other_key = host_key(&env);
        assert_ne!(other_key, key);
        let forged = env.snapshot_ids()[2].clone();
        std::fs::remove_file(state.join("signing.key")).unwrap();
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(state.join("signing.key"))
                .unwrap()
                .write_all(&kept)
                .unwrap();
        }
        // Unsigned: a snapshot whose signature is gone.
        env.settle();
        env.create();
        let unsigned = env.snapshot_ids()[3].clone();
        std::fs::remove_file(object_path(
            &env,
            &format!("metadata/{unsigned}/manifest.sig"),
        ))
        .unwrap();

        let list = list_json(&env, &["--signer", &key]);
        let by_id = |id: &str| list.iter().find(|s| s["id"] == id).unwrap().clone();
        assert_eq!(by_id(&forged)["signer"], other_key.as_str());
        assert_eq!(by_id(&forged)["trusted"], false);
        assert_eq!(by_id(&unsigned)["signed"], "no");
        assert_eq!(by_id(&good)["trusted"], true);
        let text = env.ok(&["snapshot", "list", "--signer", &key]);
        assert!(
            text.contains("SIGNED BY") && text.contains("not signed by a trusted key"),
            "{text}"
        );

        // latest passes over the two, naming them, and restores the good one.
        let out = restore(&env, "latest", &key, "latest");
        assert!(out.status.success(), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("snapshot {unsigned} passed over")) && err.contains("unsigned"),
            "{err}"
        );
        assert!(
            err.contains(&format!("snapshot {forged} passed over")),
            "{err}"
        );
        let got = restored(&env.path().join("latest"), &env.src());
        assert!(got.join("second").exists() && !got.join("forged").exists());
        // Named by id: refused, by name, on one line; nothing restored.
        for (id, why) in [
            (
                &forged,
                format!("signed by {other_key}, which trusted_signers does not name"),
            ),
            (&unsigned, "is unsigned".to_string()),
        ] {
            let out = restore(&env, id, &key, "refused");
            assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains(&format!("snapshot {id}")) && err.contains(&why),
                "{err}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(!env.path().join("refused").exists());
        }
        // Retention leaves them out: neither kept nor removed.
        let v: serde_json::Value = serde_json::from_str(&env.ok(&[
            "snapshot",
            "purge",
            "--keep-latest",
            "1",
            "--dry-run",
            "--json",
            "--signer",
            &key,
        ]))
        .unwrap();
        let decisions = v["snapshots"].as_array().unwrap();
        let left: Vec<&serde_json::Value> =
            decisions.iter().filter(|d| d["keep"].is_null()).collect();
        assert_eq!(left.len(), 2, "{v}");
        assert!(left.iter().any(|d| d["id"] == forged.as_str()), "{v}");
        assert!(left.iter().any(|d| d["id"] == unsigned.as_str()), "{v}");
        // The newest trusted one is what --keep-latest 1 keeps.
        let kept: Vec<&serde_json::Value> =
            decisions.iter().filter(|d| d["keep"] == true).collect();
        assert_eq!(kept.len(), 1, "{v}");
        assert_eq!(kept[0]["id"], good.as_str(), "{v}");

        // Signed, but its metadata swapped for another snapshot's (a valid
        // one, encrypted to the same key): refused when read.
        env.settle();
        env.create();
        let swapped = env.snapshot_ids()[4].clone();
        std::fs::copy(
            object_path(&env, &format!("metadata/{good}/db.zst.age")),
            object_path(&env, &format!("metadata/{swapped}/db.zst.age")),
        )
        .unwrap();
        let out = restore(&env, &swapped, &key, "swapped");
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("is not the metadata its signed manifest names"),
            "{}",
            stderr(&out)
        );
        // verify --deep says so whatever the trust.
        let out = env.run_with_key(&["snapshot", "verify", &swapped, "--deep"]);
        assert!(!out.status.success());
        assert!(
            format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout))
                .contains("is not the metadata its signed manifest names"),
            "{}",
            stderr(&out)
        );

        // Without trusted signers nothing changes: latest is the newest.
        let out = env.restore_to("latest", &env.path().join("plain"), &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        // The config's trusted_signers works as --signer does.
        env.extra.push(format!("trusted_signers = {key}"));
        env.write_config();
        let out = env.restore_to(&forged, &env.path().join("config"), &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("which trusted_signers does not name"),
            "{}",
            stderr(&out)
        );
        let target = env.path().join("trusted");
        env.restore_ok(&good, &target, &[]);
        assert!(restored(&target, &env.src()).join("second").exists());
    }
);

/// A signature object that is junk, too big, cut short or a symlink is
/// "invalid", never a reason to read more or to follow it.
#[test]
fn hostile_signature_objects_are_invalid() {
    let env = Env::new(Backend::Local);
    env.random_files(1, 10_000, 2);
    env.write_config();
    env.create();
    let id = env.snapshot_ids()[0].clone();
    let sig = object_path(&env, &format!("metadata/{id}/manifest.sig"));
    let real = std::fs::read(&sig).unwrap();
    let outside = env.path().join("outside");
    std::fs::write(&outside, &real).unwrap();
    for (what, bytes) in [
        ("junk", b"not json at all".to_vec()),
        ("oversized", vec![b' '; 1 << 20]),
        ("truncated", real[..real.len() / 2].to_vec()),
    ] {
        std::fs::write(&sig, &bytes).unwrap();
        let list = list_json(&env, &[]);
        assert_eq!(list[0]["signed"], "invalid", "{what}: {list:?}");
    }
    std::fs::remove_file(&sig).unwrap();
    std::os::unix::fs::symlink(&outside, &sig).unwrap();
    let list = list_json(&env, &[]);
    assert_eq!(list[0]["signed"], "invalid", "symlink: {list:?}");
    assert_eq!(std::fs::read(&outside).unwrap(), real);
}

/// A keyless copy carries each snapshot's signature: the copy reads as
/// signed by the same host.
#[test]
fn a_copy_keeps_the_signatures() {
    let env = Env::new(Backend::S3);
    env.random_files(2, 50_000, 8);
    env.write_config();
    env.create();
    let key = host_key(&env);
    let dest = env.path().join("second");
    env.ok(&["copy", "--all", "--to", dest.to_str().unwrap()]);
    let out = env.ok(&[
        "--store",
        dest.to_str().unwrap(),
        "snapshot",
        "list",
        "--json",
    ]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["signed"], "yes", "{list}");
    assert_eq!(list[0]["signer"], key.as_str(), "{list}");
}
