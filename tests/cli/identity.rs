//! The store's identity keys the local index: a store reached another way
//! (a respelt endpoint, a copy of the bucket elsewhere) keeps its index; an
//! index pointed at another store is noticed and started afresh; a store
//! made before identities gets one on its next backup, its index kept.

use std::fs;

use crate::util::tree::random_bytes;
use crate::util::{Backend, Env, figure, stderr};

fn new_chunks(out: &str) -> u64 {
    figure(out, "new chunks")
}

#[test]
fn a_respelt_endpoint_or_a_copied_store_keeps_the_index() {
    // S3: the same server, the endpoint spelt with a trailing slash.
    let mut env = Env::new(Backend::S3);
    env.random_files(3, 200_000, 1);
    env.settle();
    assert!(new_chunks(&env.create()) > 0);
    assert!(
        env.objects().iter().any(|(k, _)| k.starts_with("store/1/")),
        "the first backup names the store's identity"
    );
    env.endpoint.push('/');
    env.write_config();
    fs::write(env.src().join("g"), random_bytes(100_000, 9)).unwrap();
    let out = env.create();
    let err = stderr(&env.run(&["snapshot", "list"]));
    assert!(!err.contains("another store"), "{err}");
    // Only the new file's chunks: the index was kept.
    let blobs_before = env.blob_keys().len();
    assert!(new_chunks(&out) >= 1);
    env.settle();
    assert_eq!(new_chunks(&env.create()), 0);
    assert_eq!(env.blob_keys().len(), blobs_before);

    // A directory store copied elsewhere: its index follows it.
    let env = Env::new(Backend::Local);
    env.random_files(3, 200_000, 2);
    env.settle();
    env.create();
    let copy = env.path().join("store-copy");
    crate::util::tree::copy_tree(&env.store_dir(), &copy);
    let text = fs::read_to_string(env.config_path())
        .unwrap()
        .replace(env.store_dir().to_str().unwrap(), copy.to_str().unwrap());
    fs::write(env.config_path(), text).unwrap();
    let out = env.create();
    assert_eq!(new_chunks(&out), 0, "{out}");
}

#[test]
fn an_index_pointed_at_another_store_is_started_afresh() {
    let env = Env::new(Backend::Local);
    env.random_files(2, 100_000, 3);
    env.settle();
    env.create();
    // Another store at the same path: same spelling, another identity.
    let moved = env.path().join("store-old");
    fs::rename(env.store_dir(), &moved).unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("was made for another store") && err.contains("started afresh"),
        "{err}"
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        new_chunks(&said) > 0,
        "everything is uploaded again: {said}"
    );
}

#[test]
fn a_store_without_an_identity_gets_one_and_keeps_its_index() {
    let env = Env::new(Backend::Local);
    env.random_files(2, 100_000, 4);
    env.settle();
    env.create();
    // As made before identities: none, the index keyed by the store's
    // description.
    fs::remove_dir_all(env.store_dir().join("store")).unwrap();
    {
        let conn = rusqlite::Connection::open(env.index_path()).unwrap();
        conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'store'",
            [format!("directory {}", env.store_dir().display())],
        )
        .unwrap();
    }
    let out = env.create();
    assert_eq!(new_chunks(&out), 0, "{out}");
    let named: Vec<String> = fs::read_dir(env.store_dir().join("store/1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(named.len(), 1, "{named:?}");
    let conn = rusqlite::Connection::open(env.index_path()).unwrap();
    let keyed: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'store'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(named[0], keyed);
}

/// A store from before identities were named keeps its id in store.json:
/// the next backup reads it once, names it, and keeps the index.
#[test]
fn a_store_json_is_named_and_the_index_kept() {
    let env = Env::new(Backend::Local);
    env.random_files(2, 100_000, 5);
    env.settle();
    env.create();
    let dir = env.store_dir().join("store/1");
    let id: String = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .next()
        .unwrap();
    fs::write(
        env.store_dir().join("store.json"),
        format!("{{\"vaultik_store\": 1, \"id\": \"{id}\", \"created\": 1}}"),
    )
    .unwrap();
    fs::remove_dir_all(env.store_dir().join("store")).unwrap();
    let out = env.create();
    assert_eq!(new_chunks(&out), 0, "{out}");
    assert!(out.contains("1 GET"), "store.json read once: {out}");
    assert!(dir.join(&id).is_file());
    let out = env.create();
    assert!(out.contains("0 GET"), "{out}");
}
