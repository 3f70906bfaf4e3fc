//! Crash durability of the embedded store: a child process (this test binary, running `crash_child`) commits
//! users as fast as it can and prints each id once its callback has run `Ok`; the parent kills it with SIGKILL
//! mid-stream, reopens the file and checks that every acknowledged user is there. Three rounds on one file, so
//! recovery of a file that was itself recovered is covered too.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use herald::store::{EmbeddedStore, Store, Write};

const CHILD_DIR_ENV: &str = "HERALD_CRASH_CHILD_DIR";
const ACK: &str = "acked ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = BTreeSet::new();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env("HERALD_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut this_round = 0;
        while this_round < 300 {
            let line = lines.next().expect("child exited early").unwrap();
            if let Some(id) = line.strip_prefix(ACK) {
                acked.insert(id.to_string());
                this_round += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no flush beyond what was committed
        // Acks the child printed before it died are promises too.
        for line in lines {
            if let Some(id) = line.unwrap().strip_prefix(ACK) {
                acked.insert(id.to_string());
            }
        }
        child.wait().unwrap();

        let store = EmbeddedStore::open(dir.path(), 256).expect("reopen after kill -9");
        let stored: BTreeSet<String> = store.users().await.unwrap().into_iter().map(|u| u.id).collect();
        eprintln!("round {round}: {} acknowledged, {} stored", acked.len(), stored.len());
        let lost: Vec<_> = acked.difference(&stored).collect();
        assert!(lost.is_empty(), "round {round}: {} acknowledged users lost, e.g. {:?}", lost.len(), &lost[..1]);
        store.health().await.unwrap();
    }
}

/// The child side: does nothing unless started by the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else { return };
    let round = std::env::var("HERALD_CRASH_ROUND").unwrap();
    let store = EmbeddedStore::open(dir.as_ref(), 64).unwrap();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let store = store.clone();
            let round = round.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    let id = format!("r{round}-w{writer}-{n}");
                    store.commit(vec![Write::PutUser(common::user(&id))]).await.unwrap();
                    println!("{ACK}{id}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
}
