//! The Lua scripts for the writes whose index maintenance depends on what is already stored (a read-modify-
//! write inside Redis). Everything else is a plain command.
//!
//! Scripts are called by `EVALSHA` inside the batch's MULTI/EXEC, and the batch starts with a `SCRIPT LOAD` of
//! each script it uses: a restarted or failed-over Redis has an empty script cache, and an `EVALSHA` that
//! failed with NOSCRIPT inside EXEC would leave the rest of the transaction applied. Loading a cached script
//! is a hash lookup, paid once per batch, not per write.
//!
//! The scripts touch keys they derive from ids they read (delivery keys, tag keys), so they assume one Redis (or
//! a primary with replicas), not Redis Cluster.

use std::sync::LazyLock;

/// One script: its source and SHA-1 (what `EVALSHA` names it by).
pub struct LuaScript {
    pub code: &'static str,
    pub sha: String,
    /// Bit in a submission's `scripts` mask.
    pub bit: u8,
}

impl LuaScript {
    fn new(code: &'static str, bit: u8) -> LuaScript {
        LuaScript { code, sha: ::redis::Script::new(code).get_hash().to_string(), bit }
    }

    /// `EVALSHA sha numkeys`; the caller adds the keys and arguments.
    pub fn call(&self, numkeys: usize) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(numkeys);
        cmd
    }
}

/// KEYS: notification, open, max_seq, deliveries_of, dlq, scheduled, scheduled_members. ARGV: id, seq, json,
/// placement (`open`, `scheduled` or `final`), retention_s, delivery key prefix, scheduled member (empty unless
/// scheduled).
///
/// A notification is in at most one of the open index (by seq) and the scheduled index (by the member, found
/// again through `scheduled_members` when its status or `send_at` changes). One that is not final keeps itself
/// and its deliveries forever (a replayed one comes back from final, so earlier expiries are lifted; `SET`
/// already dropped the record's own). A final one leaves both indexes and, unless one of its deliveries is in
/// the DLQ, expires with its deliveries after the retention window.
const PUT_NOTIFICATION: &str = r#"
redis.call('SET', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], 'GT', ARGV[2], 'max')
local old = redis.call('HGET', KEYS[7], ARGV[1])
if old and old ~= ARGV[7] then
  redis.call('ZREM', KEYS[6], old)
  redis.call('HDEL', KEYS[7], ARGV[1])
end
if ARGV[4] == 'scheduled' then
  redis.call('ZADD', KEYS[6], 0, ARGV[7])
  redis.call('HSET', KEYS[7], ARGV[1], ARGV[7])
end
if ARGV[4] == 'open' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) else redis.call('ZREM', KEYS[2], ARGV[1]) end
local deliveries = redis.call('ZRANGE', KEYS[4], 0, -1)
if ARGV[4] ~= 'final' then
  redis.call('PERSIST', KEYS[4])
  for _, d in ipairs(deliveries) do redis.call('PERSIST', ARGV[6] .. d) end
  return 0
end
for _, d in ipairs(deliveries) do
  if redis.call('ZSCORE', KEYS[5], d) then return 0 end
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[4], ARGV[5])
for _, d in ipairs(deliveries) do redis.call('EXPIRE', ARGV[6] .. d, ARGV[5]) end
return 0
"#;

/// KEYS: delivery, deliveries_of, notification, dlq, dlq_channel. ARGV: id, json, dead (1/0), delivery key
/// prefix.
///
/// A dead delivery enters the DLQ and pins its notification and siblings (no expiry) until it is replayed.
/// A live one leaves the DLQ and, if its notification is already final and expiring (a late provider report),
/// expires with it.
const PUT_DELIVERY: &str = r#"
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[4], 0, ARGV[1])
  redis.call('ZADD', KEYS[5], 0, ARGV[1])
  if redis.call('PERSIST', KEYS[3]) == 1 then
    redis.call('PERSIST', KEYS[2])
    for _, d in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do redis.call('PERSIST', ARGV[4] .. d) end
  end
  return 0
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
local ttl = redis.call('PTTL', KEYS[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 0
"#;

/// KEYS: inbox, inbox_items, inbox_unread, inbox_read. ARGV: id, json, unread (1/0), cap.
///
/// Replaces the item with its read state, then trims the oldest items beyond the cap from every inbox key.
const PUT_INBOX_ITEM: &str = r#"
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[1])
if ARGV[3] == '1' then redis.call('ZADD', KEYS[3], 0, ARGV[1]) else redis.call('ZREM', KEYS[3], ARGV[1]) end
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('ZREM', KEYS[3], unpack(old))
  redis.call('HDEL', KEYS[4], unpack(old))
end
return 0
"#;

/// KEYS: inbox_unread, inbox_read. ARGV: read_at, item ids... Only unread items are marked, so unknown,
/// already-read and other users' ids change nothing and a first `read_at` is never overwritten.
const MARK_READ: &str = r#"
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then redis.call('HSET', KEYS[2], ARGV[i], ARGV[1]) end
end
return 0
"#;

/// KEYS: inbox_unread, inbox_read. ARGV: read_at.
const MARK_ALL_READ: &str = r#"
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do redis.call('HSET', KEYS[2], id, ARGV[1]) end
redis.call('DEL', KEYS[1])
return 0
"#;

/// KEYS: users, user_ids, user_tags. ARGV: id, json, tag key prefix, tags (space-separated; tags have no spaces).
///
/// Puts the record and its id, then moves the user between tag sets: out of the ones it lost (read from
/// `user_tags`), into the ones it has.
const PUT_USER: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
local new = {}
for tag in string.gmatch(ARGV[4], '%S+') do new[tag] = true end
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old then
  for tag in string.gmatch(old, '%S+') do
    if not new[tag] then redis.call('ZREM', ARGV[3] .. tag, ARGV[1]) end
  end
end
for tag in pairs(new) do redis.call('ZADD', ARGV[3] .. tag, 0, ARGV[1]) end
if ARGV[4] == '' then redis.call('HDEL', KEYS[3], ARGV[1]) else redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
return 0
"#;

/// Every script, indexed by its bit.
pub static SCRIPTS: LazyLock<[LuaScript; 6]> = LazyLock::new(|| {
    [
        LuaScript::new(PUT_NOTIFICATION, 0),
        LuaScript::new(PUT_DELIVERY, 1),
        LuaScript::new(PUT_INBOX_ITEM, 2),
        LuaScript::new(MARK_READ, 3),
        LuaScript::new(MARK_ALL_READ, 4),
        LuaScript::new(PUT_USER, 5),
    ]
});

pub fn put_notification() -> &'static LuaScript {
    &SCRIPTS[0]
}
pub fn put_delivery() -> &'static LuaScript {
    &SCRIPTS[1]
}
pub fn put_inbox_item() -> &'static LuaScript {
    &SCRIPTS[2]
}
pub fn mark_read() -> &'static LuaScript {
    &SCRIPTS[3]
}
pub fn mark_all_read() -> &'static LuaScript {
    &SCRIPTS[4]
}
pub fn put_user() -> &'static LuaScript {
    &SCRIPTS[5]
}
