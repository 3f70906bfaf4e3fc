//! Queries. Each is a few pipelined round trips that read only the keys it needs, through the indexes the
//! writer keeps (no KEYS or SCAN). Unlike the embedded backend's, a read spanning several round trips is not a
//! snapshot: a commit may land between them. Pages fetch one item more than asked to know whether a next page
//! exists; the cursor is the last id returned.

use ::redis::aio::ConnectionManager;
use ::redis::{Cmd, FromRedisValue};
use jiff::Timestamp;
use serde::de::DeserializeOwned;

use super::keys::{Keys, scheduled_member, scheduled_until};
use super::unavailable;
use crate::domain::{
    Campaign, Channel, Delivery, FinalCounts, IdempotencyEntry, InboxItem, Notification, Sequence, Template, User,
};
use crate::store::codec::from_json;
use crate::store::{Page, ScheduleCursor, StoreError, StoredNotification};

/// Most keys fetched by one MGET or one pipeline, so recovering a large state streams in bounded replies.
const CHUNK: usize = 512;

type Bytes = Vec<u8>;

async fn query<T: FromRedisValue>(conn: &mut ConnectionManager, cmd: &Cmd) -> Result<T, StoreError> {
    cmd.query_async(conn).await.map_err(|e| unavailable("read", e))
}

/// `MGET` in chunks.
async fn mget(conn: &mut ConnectionManager, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
    let mut values = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let part: Vec<Option<Bytes>> = query(conn, ::redis::cmd("MGET").arg(chunk)).await?;
        values.extend(part);
    }
    Ok(values)
}

fn parse_all<T: DeserializeOwned>(values: Vec<Bytes>, what: &str) -> Result<Vec<T>, StoreError> {
    values.iter().map(|v| from_json(what, v)).collect()
}

pub async fn users(conn: &mut ConnectionManager, keys: &Keys) -> Result<Vec<User>, StoreError> {
    parse_all(query(conn, ::redis::cmd("HVALS").arg(keys.users())).await?, "user")
}

pub async fn templates(conn: &mut ConnectionManager, keys: &Keys) -> Result<Vec<Template>, StoreError> {
    parse_all(query(conn, ::redis::cmd("HVALS").arg(keys.templates())).await?, "template")
}

pub async fn open_notifications(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> Result<Vec<StoredNotification>, StoreError> {
    let ids: Vec<String> = query(conn, ::redis::cmd("ZRANGE").arg(keys.open()).arg(0).arg(-1)).await?;
    let mut result = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        for (id, stored) in chunk.iter().zip(load(conn, keys, chunk).await?) {
            result.push(stored.ok_or_else(|| StoreError::Corrupt(format!("open index names missing {id}")))?);
        }
    }
    Ok(result)
}

pub async fn notification(
    conn: &mut ConnectionManager,
    keys: &Keys,
    id: &str,
) -> Result<Option<StoredNotification>, StoreError> {
    Ok(load(conn, keys, &[id.to_string()]).await?.pop().flatten())
}

/// Loads notifications with their deliveries (in id order): three round trips for the whole slice.
async fn load(
    conn: &mut ConnectionManager,
    keys: &Keys,
    ids: &[String],
) -> Result<Vec<Option<StoredNotification>>, StoreError> {
    let records = mget(conn, &ids.iter().map(|id| keys.notification(id)).collect::<Vec<_>>()).await?;
    let mut pipe = ::redis::pipe();
    for id in ids {
        pipe.cmd("ZRANGE").arg(keys.deliveries_of(id)).arg(0).arg(-1);
    }
    let delivery_ids: Vec<Vec<String>> = pipe.query_async(conn).await.map_err(|e| unavailable("read", e))?;
    let delivery_keys: Vec<String> = delivery_ids.iter().flatten().map(|d| keys.delivery(d)).collect();
    let mut deliveries = mget(conn, &delivery_keys).await?.into_iter();
    let mut result = Vec::with_capacity(ids.len());
    for ((id, record), delivery_ids) in ids.iter().zip(records).zip(delivery_ids) {
        let mut stored = Vec::with_capacity(delivery_ids.len());
        for delivery_id in &delivery_ids {
            let bytes = deliveries.next().flatten();
            let bytes = bytes.ok_or_else(|| StoreError::Corrupt(format!("missing delivery {delivery_id} of {id}")))?;
            stored.push(from_json::<Delivery>("delivery", &bytes)?);
        }
        let notification = record.map(|bytes| from_json::<Notification>("notification", &bytes)).transpose()?;
        result.push(notification.map(|notification| StoredNotification { notification, deliveries: stored }));
    }
    Ok(result)
}

pub async fn delivery(conn: &mut ConnectionManager, keys: &Keys, id: &str) -> Result<Option<Delivery>, StoreError> {
    let bytes: Option<Bytes> = query(conn, ::redis::cmd("GET").arg(keys.delivery(id))).await?;
    bytes.map(|b| from_json("delivery", &b)).transpose()
}

pub async fn idempotency_entries(
    conn: &mut ConnectionManager,
    keys: &Keys,
    now: Timestamp,
) -> Result<Vec<(String, IdempotencyEntry)>, StoreError> {
    // The index is in milliseconds; the exact comparison below drops entries expiring within `now`'s ms.
    let index = keys.idempotency_index();
    let names: Vec<String> =
        query(conn, ::redis::cmd("ZRANGEBYSCORE").arg(index).arg(now.as_millisecond()).arg("+inf")).await?;
    let values = mget(conn, &names.iter().map(|k| keys.idempotency(k)).collect::<Vec<_>>()).await?;
    let mut result = Vec::with_capacity(names.len());
    // A missing value expired in Redis between the two reads.
    for (name, value) in names.into_iter().zip(values) {
        if let Some(bytes) = value {
            let entry: IdempotencyEntry = from_json("idempotency entry", &bytes)?;
            if entry.expires_at > now {
                result.push((name, entry));
            }
        }
    }
    Ok(result)
}

pub async fn dlq(
    conn: &mut ConnectionManager,
    keys: &Keys,
    channel: Option<Channel>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page<Delivery>, StoreError> {
    let limit = limit.max(1);
    let key = channel.map_or_else(|| keys.dlq(), |c| keys.dlq_channel(c.as_str()));
    let min = cursor.map_or_else(|| "-".to_string(), |c| format!("({c}"));
    let ids: Vec<String> =
        query(conn, ::redis::cmd("ZRANGEBYLEX").arg(key).arg(min).arg("+").arg("LIMIT").arg(0).arg(limit + 1)).await?;
    let (ids, next_cursor) = page(ids, limit);
    let values = mget(conn, &ids.iter().map(|id| keys.delivery(id)).collect::<Vec<_>>()).await?;
    let items = ids
        .iter()
        .zip(values)
        .map(|(id, v)| {
            let bytes = v.ok_or_else(|| StoreError::Corrupt(format!("dlq names missing {id}")))?;
            from_json("delivery", &bytes)
        })
        .collect::<Result<_, _>>()?;
    Ok(Page { items, next_cursor })
}

pub async fn inbox(
    conn: &mut ConnectionManager,
    keys: &Keys,
    user_id: &str,
    cursor: Option<&str>,
    limit: usize,
    unread_only: bool,
) -> Result<(Page<InboxItem>, u64), StoreError> {
    let limit = limit.max(1);
    let index = if unread_only { keys.inbox_unread(user_id) } else { keys.inbox(user_id) };
    let max = cursor.map_or_else(|| "+".to_string(), |c| format!("({c}"));
    let ids: Vec<String> =
        query(conn, ::redis::cmd("ZREVRANGEBYLEX").arg(index).arg(max).arg("-").arg("LIMIT").arg(0).arg(limit + 1))
            .await?;
    let (ids, next_cursor) = page(ids, limit);
    let unread_key = keys.inbox_unread(user_id);
    if ids.is_empty() {
        let unread: u64 = query(conn, ::redis::cmd("ZCARD").arg(unread_key)).await?;
        return Ok((Page { items: Vec::new(), next_cursor }, unread));
    }
    let mut pipe = ::redis::pipe();
    pipe.cmd("HMGET").arg(keys.inbox_items(user_id)).arg(&ids);
    pipe.cmd("HMGET").arg(keys.inbox_read(user_id)).arg(&ids);
    pipe.cmd("ZCARD").arg(unread_key);
    let (records, reads, unread): (Vec<Option<Bytes>>, Vec<Option<Bytes>>, u64) =
        pipe.query_async(conn).await.map_err(|e| unavailable("read", e))?;
    let mut items = Vec::with_capacity(ids.len());
    for ((id, record), read_at) in ids.iter().zip(records).zip(reads) {
        let bytes = record.ok_or_else(|| StoreError::Corrupt(format!("inbox index names missing item {id}")))?;
        let mut item: InboxItem = from_json("inbox item", &bytes)?;
        // A mark after the put lives beside the item, so marking never rewrites the item's JSON.
        if let Some(read_at) = read_at {
            item.read_at = Some(from_json("inbox read mark", &read_at)?);
        }
        items.push(item);
    }
    Ok((Page { items, next_cursor }, unread))
}

/// One `ZRANGEBYLEX` of the scheduled index, then the records. A record missing by the second read stopped
/// being scheduled, became final and expired in between (a scheduled one never expires), so it is left out.
pub async fn scheduled(
    conn: &mut ConnectionManager,
    keys: &Keys,
    after: Option<&ScheduleCursor>,
    until_ms: i64,
    limit: usize,
) -> Result<Vec<Notification>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let min = after.map_or_else(|| "-".to_string(), |c| format!("({}", scheduled_member(c.due_ms, &c.id)));
    let max = scheduled_until(until_ms);
    let members: Vec<String> =
        query(conn, ::redis::cmd("ZRANGEBYLEX").arg(keys.scheduled()).arg(min).arg(max).arg("LIMIT").arg(0).arg(limit))
            .await?;
    let ids = members
        .iter()
        .map(|m| {
            let id = m.get(16..).and_then(|rest| rest.strip_prefix(':'));
            id.ok_or_else(|| StoreError::Corrupt(format!("scheduled index member {m:?} is malformed")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let records = mget(conn, &ids.iter().map(|id| keys.notification(id)).collect::<Vec<_>>()).await?;
    records.into_iter().flatten().map(|bytes| from_json("notification", &bytes)).collect()
}

pub async fn sequence(conn: &mut ConnectionManager, keys: &Keys, id: &str) -> Result<Option<Sequence>, StoreError> {
    let bytes: Option<Bytes> = query(conn, ::redis::cmd("GET").arg(keys.sequence(id))).await?;
    bytes.map(|b| from_json("sequence", &b)).transpose()
}

/// The open index, then the records in chunks. An open sequence never expires, so a record missing by the
/// second read became final and expired in between; it is left out.
pub async fn open_sequences(conn: &mut ConnectionManager, keys: &Keys) -> Result<Vec<Sequence>, StoreError> {
    let ids: Vec<String> = query(conn, ::redis::cmd("ZRANGE").arg(keys.open_sequences()).arg(0).arg(-1)).await?;
    let records = mget(conn, &ids.iter().map(|id| keys.sequence(id)).collect::<Vec<_>>()).await?;
    records.into_iter().flatten().map(|bytes| from_json("sequence", &bytes)).collect()
}

pub async fn campaign(conn: &mut ConnectionManager, keys: &Keys, id: &str) -> Result<Option<Campaign>, StoreError> {
    Ok(load_campaigns(conn, keys, &[id.to_string()]).await?.pop().flatten())
}

/// The active index, then the records and their counts. An active campaign is never deleted, so a record
/// missing by the second read would be a corrupt index; it is left out rather than failing the start.
pub async fn active_campaigns(conn: &mut ConnectionManager, keys: &Keys) -> Result<Vec<Campaign>, StoreError> {
    let ids: Vec<String> = query(conn, ::redis::cmd("ZRANGE").arg(keys.active_campaigns()).arg(0).arg(-1)).await?;
    Ok(load_campaigns(conn, keys, &ids).await?.into_iter().flatten().collect())
}

/// Records, then their final counts: two round trips per chunk.
async fn load_campaigns(
    conn: &mut ConnectionManager,
    keys: &Keys,
    ids: &[String],
) -> Result<Vec<Option<Campaign>>, StoreError> {
    let mut result = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let records = mget(conn, &chunk.iter().map(|id| keys.campaign(id)).collect::<Vec<_>>()).await?;
        let mut pipe = ::redis::pipe();
        for id in chunk {
            pipe.cmd("HMGET").arg(keys.campaign_finals(id)).arg(&["completed", "failed", "cancelled"]);
        }
        let counts: Vec<Vec<Option<i64>>> = pipe.query_async(conn).await.map_err(|e| unavailable("read", e))?;
        for (record, counts) in records.into_iter().zip(counts) {
            // A DLQ replay's -1 may land before the +1 it takes back only if commits were reordered; never below 0.
            let count = |i: usize| counts.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
            let campaign = record.map(|bytes| from_json::<Campaign>("campaign", &bytes)).transpose()?;
            result.push(campaign.map(|mut c| {
                c.finals = FinalCounts { completed: count(0), failed: count(1), cancelled: count(2) };
                c
            }));
        }
    }
    Ok(result)
}

pub async fn audience_page(
    conn: &mut ConnectionManager,
    keys: &Keys,
    id: &str,
    page: u32,
) -> Result<Option<Vec<String>>, StoreError> {
    let bytes: Option<Bytes> = query(conn, ::redis::cmd("HGET").arg(keys.audience(id)).arg(page)).await?;
    bytes.map(|b| from_json("audience page", &b)).transpose()
}

/// One `ZRANGEBYLEX` of the user id index or of the tag's set.
pub async fn user_ids(
    conn: &mut ConnectionManager,
    keys: &Keys,
    after: Option<&str>,
    tag: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let key = tag.map_or_else(|| keys.user_ids(), |t| keys.tag(t));
    let min = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
    query(conn, ::redis::cmd("ZRANGEBYLEX").arg(key).arg(min).arg("+").arg("LIMIT").arg(0).arg(limit)).await
}

/// Adds every user of the users hash to the user id index: a store written before the index existed has
/// users but no index. Cheap when they agree (two counts).
pub async fn backfill_user_ids(conn: &mut ConnectionManager, keys: &Keys) -> Result<usize, StoreError> {
    let mut pipe = ::redis::pipe();
    pipe.cmd("HLEN").arg(keys.users()).cmd("ZCARD").arg(keys.user_ids());
    let (users, indexed): (u64, u64) = pipe.query_async(conn).await.map_err(|e| unavailable("read", e))?;
    if users == indexed {
        return Ok(0);
    }
    let ids: Vec<String> = query(conn, ::redis::cmd("HKEYS").arg(keys.users())).await?;
    for chunk in ids.chunks(CHUNK) {
        let mut zadd = ::redis::cmd("ZADD");
        zadd.arg(keys.user_ids());
        for id in chunk {
            zadd.arg(0).arg(id);
        }
        query::<()>(conn, &zadd).await?;
    }
    Ok(ids.len())
}

pub async fn max_seq(conn: &mut ConnectionManager, keys: &Keys) -> Result<u64, StoreError> {
    let score: Option<f64> = query(conn, ::redis::cmd("ZSCORE").arg(keys.max_seq()).arg("max")).await?;
    // Seqs are below 2^53, so the score holds them exactly.
    Ok(score.map_or(0, |s| s as u64))
}

/// Keeps the first `limit` of `ids` (which holds up to `limit + 1`); the cursor is set only if one was left.
fn page(mut ids: Vec<String>, limit: usize) -> (Vec<String>, Option<String>) {
    let more = ids.len() > limit;
    ids.truncate(limit);
    let next_cursor = if more { ids.last().cloned() } else { None };
    (ids, next_cursor)
}
