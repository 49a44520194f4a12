//! The batched calls on a real cluster: a burst's sessions spread over every
//! master, and across a failover.

use std::collections::BTreeSet;
use std::time::Duration;

use rig_proto::{Psk, SessionKeys};

use super::{ClusterCache, RedisClusterCfg};
use crate::cache::{NodeOp, SessionCache, SessionRecord};

const TTL: Duration = Duration::from_secs(3600);

fn rec(id: u64, rx: u64) -> SessionRecord {
    let keys = SessionKeys::derive(&Psk([1; 32]), "d", &[1; 16], &[2; 16], id);
    let mut r = SessionRecord::new(id, &format!("dev-{id}"), &keys);
    r.rx_counter = rx;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_read_and_written_on_every_master_and_after_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedisClusterCfg {
        masters: 3,
        replicas: 1,
    };
    let c = ClusterCache::start_in(dir.path(), &cfg, 7).await.unwrap();
    let ids: Vec<u64> = (1..=48).collect();
    let first: Vec<_> = ids.iter().map(|&id| rec(id, 1)).collect();
    c.put_many(&first, TTL).await.unwrap();
    let parts: BTreeSet<_> = ids.iter().map(|&id| c.part_of(id)).collect();
    assert_eq!(parts.len(), 3, "the burst spans every master");
    let got = c.get_many(&ids).await.unwrap();
    assert_eq!(got, first.iter().cloned().map(Some).collect::<Vec<_>>());
    // In the order asked for, not the order of the parts.
    let reversed: Vec<u64> = ids.iter().rev().copied().collect();
    let got = c.get_many(&reversed).await.unwrap();
    assert_eq!(got[0].as_ref().map(|r| r.session_id), Some(48));

    let report = c.node(1, &NodeOp::Kill).await.unwrap();
    assert!(report.promoted.is_some(), "{report:?}");
    let lost: BTreeSet<u64> = report
        .lost
        .iter()
        .map(|e| u64::from_str_radix(&e.session, 16).unwrap())
        .collect();
    let got = c.get_many(&ids).await.unwrap();
    for (want, got) in first.iter().zip(&got) {
        let expect = (!lost.contains(&want.session_id)).then(|| want.clone());
        assert_eq!(got, &expect, "session {}", want.session_id);
    }
    // The promoted replica's part takes writes too.
    let second: Vec<_> = ids.iter().map(|&id| rec(id, 2)).collect();
    c.put_many(&second, TTL).await.unwrap();
    let got = c.get_many(&ids).await.unwrap();
    assert_eq!(got, second.into_iter().map(Some).collect::<Vec<_>>());
    c.kill().await.unwrap();
}
