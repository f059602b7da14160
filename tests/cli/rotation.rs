//! Key rotation (issue 33): a backup reuses only blobs sealed to exactly
//! its recipient set, so that after `age_recipient` changes, the newest
//! snapshot restores with the new key alone, the old key destroyed.

use std::process::Command;

use crate::core::restored;
use crate::util::tree::assert_same_tree;
use crate::util::{Backend, Env, bin, stderr};

/// A new key pair: (identity, public key).
fn keygen() -> (String, String) {
    let out = Command::new(bin()).arg("keygen").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let id = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    (id, public)
}

/// A backup that must succeed: what it said on stderr.
fn create(env: &Env) -> String {
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

both!(the_newest_snapshot_restores_with_the_new_key_alone, |b| {
    let mut env = Env::new(b);
    env.extra = vec!["blob_size_limit = 1MiB".into(), "chunk_size = 64KiB".into()];
    env.random_files(6, 400_000, 3);
    env.write_config();
    env.create();
    let first = env.snapshot_ids()[0].clone();
    let old_blobs = env.blob_keys();
    assert!(old_blobs.len() >= 2, "{old_blobs:?}");
    // Unchanged, same key: nothing new.
    env.settle();
    env.create();
    assert_eq!(env.blob_keys(), old_blobs);

    // Rotate: a new key pair; the old identity is destroyed.
    let (new_id, new_public) = keygen();
    env.recipient = new_public.clone();
    env.write_config();
    let err = create(&env);
    assert!(err.contains("age_recipient changed"), "{err}");
    // Every byte uploaded again, into blobs of the new set (what rotation
    // costs: one full upload).
    let after = env.blob_keys();
    let new: Vec<&String> = after.iter().filter(|k| !old_blobs.contains(k)).collect();
    assert!(
        new.len() >= old_blobs.len(),
        "{} new of {}",
        new.len(),
        old_blobs.len()
    );
    env.identity = new_id;
    let target = env.path().join("new");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    // The snapshot before the rotation needs the old key, which is gone.
    let out = env.restore_to(&first, &env.path().join("old"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));

    // The next run with the new key is incremental again, and adding the
    // same key twice or in another order is the same set.
    env.settle();
    let before = env.blob_keys();
    env.extra.push(format!("age_recipient = {new_public}"));
    env.write_config();
    let err = create(&env);
    assert!(!err.contains("age_recipient changed"), "{err}");
    assert_eq!(env.blob_keys(), before);
    // A second recipient is another set: uploaded again, and either key
    // restores the newest.
    let (second_id, second_public) = keygen();
    env.extra.pop();
    env.extra.push(format!("age_recipient = {second_public}"));
    env.write_config();
    let err = create(&env);
    assert!(err.contains("age_recipient changed"), "{err}");
    env.identity = second_id;
    let target = env.path().join("second");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));

    // The index lost and rebuilt with the newest key: it knows the blobs of
    // the set configured now, and the next run uploads none.
    env.settle();
    env.create();
    let before = env.blob_keys();
    std::fs::remove_dir_all(env.index_path().parent().unwrap()).unwrap();
    let out = env.run_with_key(&["index", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = create(&env);
    assert!(!err.contains("age_recipient changed"), "{err}");
    assert_eq!(env.blob_keys(), before);
    // Rebuilt while the config names another set again: the snapshots of
    // the old set are left out, said by name, and nothing of them is reused.
    env.extra.pop();
    env.write_config();
    let out = env.run_with_key(&["index", "rebuild", "--force"]);
    let err = stderr(&out);
    assert!(err.contains("sealed to other recipients"), "{err}");
});
