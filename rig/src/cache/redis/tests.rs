//! The rig's redis-server in front of an external cloud: the cloud's user
//! reaches its own keys and nothing else, and `evict` picks from them.

use redis::AsyncCommands as _;

use super::RedisCache;
use crate::cache::SessionCache;

async fn cloud_conn(c: &RedisCache) -> redis::aio::MultiplexedConnection {
    redis::Client::open(c.cloud_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn is_noperm(r: &redis::RedisResult<()>) -> bool {
    matches!(r, Err(e) if e.to_string().contains("NoPerm"))
}

#[tokio::test]
async fn an_external_clouds_user_may_use_its_key_pattern_and_only_that() {
    let dir = tempfile::tempdir().unwrap();
    // The rig's own pattern only: a team's cloud with its own key names is
    // refused (what every `keys:`-less bench gives).
    let plain = RedisCache::start_in(&dir.path().join("plain"), 1).await.unwrap();
    let mut c = cloud_conn(&plain).await;
    let r: redis::RedisResult<()> = c.hset("acme:sess:1", "key", "v").await;
    assert!(is_noperm(&r), "{r:?}");
    plain.kill().await.unwrap();

    let c2 = RedisCache::start_with(&dir.path().join("acme"), 1, Some("acme:sess:*"))
        .await
        .unwrap();
    let mut c = cloud_conn(&c2).await;
    let ok: redis::RedisResult<()> = c.hset("acme:sess:1", "key", "v").await;
    assert!(ok.is_ok(), "{ok:?}");
    let ok: redis::RedisResult<()> = c.pexpire("acme:sess:1", 60_000).await;
    assert!(ok.is_ok(), "{ok:?}");
    assert!(is_noperm(&c.set("other:1", "x").await), "other keys stay closed");
    let flush: redis::RedisResult<()> = redis::cmd("FLUSHALL").query_async(&mut c).await;
    assert!(is_noperm(&flush), "no @dangerous command: {flush:?}");
    let _: () = c.set("acme:sess:2", "opaque").await.unwrap();
    // Evicting everything takes the team's keys, whatever their values.
    let gone = c2.evict(1.0).await.unwrap();
    let mut names: Vec<String> = gone.iter().map(|e| e.session.clone()).collect();
    names.sort();
    assert_eq!(names, ["acme:sess:1", "acme:sess:2"]);
    assert!(gone.iter().all(|e| e.device_id.is_empty()));
    let left: Vec<String> = c.keys("acme:sess:*").await.unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    c2.kill().await.unwrap();
}

#[test]
fn a_key_pattern_cannot_smuggle_acl_rules() {
    let cfg = super::RedisCfg {
        keys: Some("acme:* +@all".into()),
    };
    assert!(cfg.problems()[0].contains("without spaces"));
    let nl = super::RedisCfg {
        keys: Some("acme:*\nuser evil on nopass ~* +@all".into()),
    };
    assert!(!nl.problems().is_empty());
    assert!(
        super::RedisCfg {
            keys: Some("acme:session:*".into())
        }
        .problems()
        .is_empty()
    );
}
