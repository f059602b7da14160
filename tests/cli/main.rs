//! The one integration test binary: the real `vaultik` binary against a real
//! s3s-fs server on 127.0.0.1 (and the local-directory store where it costs
//! little). Each test has its own scratch directory, key, index and bucket.

#[macro_use]
mod util;

mod awkward;
mod browse;
mod check;
mod cold;
mod controls;
mod copy;
mod core;
mod crash;
mod credentials;
mod daemon;
mod disk;
mod faults;
mod hostile;
mod hostile_s3;
mod hostile_sparse;
mod hostile_sql;
mod hostile_store;
mod hostile_xattrs;
mod identity;
mod immutable;
mod leaks;
mod limits;
mod monitor;
mod newcomer;
mod ops;
mod outage;
mod passphrase;
mod reach;
mod rebuild;
mod repack;
mod rescue;
mod retention;
mod rotation;
mod signing;
mod streams;
mod swaps;
mod system;
mod xattrs;
