//! Per-room mutual exclusion for `find`: room look-up and join must not interleave with another
//! node's, or two first-comers both get `create`. Without Redis there is one node and its own
//! scheduling is enough; with Redis a `SET NX PX` key per room serves as the lock.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::ConnectionManager;

static REDIS: OnceLock<ConnectionManager> = OnceLock::new();

/// Uses `client` for room locks; the connection manager reconnects by itself.
pub async fn use_redis(client: &redis::Client) -> Result<()> {
    let cm = ConnectionManager::new(client.clone())
        .await
        .context("cannot reach Redis")?;
    let _ = REDIS.set(cm);
    Ok(())
}

/// Held while a `find` looks up and joins its room; released on drop.
pub struct RoomGuard {
    key: Option<(String, String)>,
}

/// Takes the room's lock (owner `id`), waiting up to ~2 s; the lock itself expires after 2 s,
/// so a node dying while holding it blocks nobody for long.
pub async fn room(room: &str, id: &str) -> RoomGuard {
    let Some(cm) = REDIS.get() else {
        return RoomGuard { key: None };
    };
    let key = format!("camstream-signal:lock:{room}");
    for _ in 0..100 {
        let mut c = cm.clone();
        let got: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&key)
            .arg(id)
            .arg("NX")
            .arg("PX")
            .arg(2000)
            .query_async(&mut c)
            .await;
        match got {
            Ok(Some(_)) => {
                return RoomGuard {
                    key: Some((key, id.to_string())),
                }
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                tracing::warn!("room lock unavailable: {e}");
                break;
            }
        }
    }
    RoomGuard { key: None }
}

impl Drop for RoomGuard {
    fn drop(&mut self) {
        let (Some((key, id)), Some(cm)) = (self.key.take(), REDIS.get()) else {
            return;
        };
        let mut c = cm.clone();
        // Delete only our own lock (it may have expired and been taken by another node).
        tokio::spawn(async move {
            let script = redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            );
            let _: redis::RedisResult<i32> = script.key(key).arg(id).invoke_async(&mut c).await;
        });
    }
}
