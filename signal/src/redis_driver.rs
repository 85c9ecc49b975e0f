//! socketioxide-redis driver on a reconnecting Redis connection.
//!
//! The stock driver holds one multiplexed connection: when Redis restarts, that connection and
//! its subscriptions are gone for good and the nodes stop sharing rooms until they are
//! restarted. This one sits on redis-rs's `ConnectionManager`, which reconnects with backoff and
//! subscribes to the adapter's channels again, so the nodes find each other once Redis is back.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, FromRedisValue, PushInfo, PushKind};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

#[derive(Debug)]
pub struct Error(redis::RedisError);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Error {}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Self(e)
    }
}

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

#[derive(Clone)]
pub struct ReconnectingDriver {
    handlers: Handlers,
    conn: ConnectionManager,
}

/// Hands one pushed message to the adapter's stream for its channel. Runs on the connection's
/// reader task: never blocks, a full stream drops the message (the adapter times out the
/// request it belonged to).
fn dispatch(msg: PushInfo, handlers: &Handlers) {
    if !matches!(msg.kind, PushKind::Message | PushKind::SMessage) || msg.data.len() < 2 {
        return;
    }
    let mut data = msg.data.into_iter();
    let (Some(chan), Some(payload)) = (data.next(), data.next()) else {
        return;
    };
    let (Ok(chan), Ok(payload)) = (
        String::from_redis_value(chan),
        Vec::<u8>::from_redis_value(payload),
    ) else {
        tracing::warn!("redis: unreadable pub/sub message");
        return;
    };
    let Ok(handlers) = handlers.read() else {
        return;
    };
    if let Some(tx) = handlers.get(&chan) {
        if let Err(e) = tx.try_send((chan, payload)) {
            tracing::warn!("redis: adapter stream full, message dropped: {e}");
        }
    }
}

impl ReconnectingDriver {
    /// Connects (RESP3: pub/sub messages arrive as pushes on the same connection).
    pub async fn new(client: &redis::Client) -> Result<Self, redis::RedisError> {
        let handlers: Handlers = Arc::default();
        let h = handlers.clone();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(move |msg: PushInfo| {
                dispatch(msg, &h);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2));
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(Self { handlers, conn })
    }
}

impl Driver for ReconnectingDriver {
    type Error = Error;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        self.conn
            .clone()
            .publish::<_, _, redis::Value>(chan, val)
            .await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        if let Ok(mut h) = self.handlers.write() {
            h.insert(chan.clone(), tx);
        }
        self.conn.clone().subscribe(chan.as_str()).await?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        if let Ok(mut h) = self.handlers.write() {
            h.remove(&chan);
        }
        self.conn.clone().unsubscribe(chan).await?;
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(count)
    }
}
