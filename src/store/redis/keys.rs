//! The Redis key layout of the store (the table in `docs/store.md`, "Redis backend").
//!
//! Every key starts with the configured prefix. Variable parts (ids, user ids, idempotency keys) always come
//! last, after a fixed segment per kind of key, so two different keys can never collide whatever the ids
//! contain (`inbox:unread:{user}` can never equal `inbox:items:{other user}`).

/// Builds the keys of one deployment (one prefix).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_string() }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + kind.len() + id.len());
        key.push_str(&self.prefix);
        key.push_str(kind);
        key.push_str(id);
        key
    }

    /// Hash: user id → `User` JSON.
    pub fn users(&self) -> String {
        self.key("users", "")
    }

    /// Sorted set, all scores 0: every user id, for paging all users in id order.
    pub fn user_ids(&self) -> String {
        self.key("users:ids", "")
    }

    /// Hash: user id → the user's tags, space-separated (absent without tags), so a changed user's old tags are
    /// found without decoding the old record.
    pub fn user_tags(&self) -> String {
        self.key("users:tags", "")
    }

    /// Sorted set, all scores 0: the ids of the users carrying `tag`.
    pub fn tag(&self, tag: &str) -> String {
        self.key("tag:", tag)
    }

    /// The prefix of [`Keys::tag`], for the script that builds tag keys from the tags it reads.
    pub fn tag_prefix(&self) -> String {
        self.key("tag:", "")
    }

    /// String: `Campaign` JSON (without its final counts).
    pub fn campaign(&self, id: &str) -> String {
        self.key("campaign:", id)
    }

    /// Sorted set, all scores 0: the ids of the campaigns whose status is active.
    pub fn active_campaigns(&self) -> String {
        self.key("campaigns", "")
    }

    /// Hash: page number → JSON array of user ids, a campaign's explicit audience while it is active.
    pub fn audience(&self, campaign_id: &str) -> String {
        self.key("audience:", campaign_id)
    }

    /// Hash: `completed`/`failed`/`cancelled` → count of a campaign's notifications in that final status.
    pub fn campaign_finals(&self, campaign_id: &str) -> String {
        self.key("finals:", campaign_id)
    }

    /// Hash: template id → `Template` JSON.
    pub fn templates(&self) -> String {
        self.key("templates", "")
    }

    /// String: `Notification` JSON; expires `retention_s` after it became final (unless a delivery is dead).
    pub fn notification(&self, id: &str) -> String {
        self.key("n:", id)
    }

    /// Sorted set: score `seq`, member notification id, for every notification that is not final.
    pub fn open(&self) -> String {
        self.key("open", "")
    }

    /// Sorted set, all scores 0: a [`scheduled_member`] for every notification whose status is `scheduled`.
    pub fn scheduled(&self) -> String {
        self.key("scheduled", "")
    }

    /// Hash: scheduled notification id → its member in [`Keys::scheduled`], so a status or `send_at` change
    /// finds the old member.
    pub fn scheduled_members(&self) -> String {
        self.key("scheduled:members", "")
    }

    /// Sorted set with one member, `max`, whose score is the highest `seq` put (`ZADD GT`).
    pub fn max_seq(&self) -> String {
        self.key("max_seq", "")
    }

    /// Sorted set, all scores 0: a notification's delivery ids in id order.
    pub fn deliveries_of(&self, notification_id: &str) -> String {
        self.key("nd:", notification_id)
    }

    /// String: `Delivery` JSON.
    pub fn delivery(&self, id: &str) -> String {
        self.key("d:", id)
    }

    /// The prefix of [`Keys::delivery`], for scripts that build delivery keys from ids they read.
    pub fn delivery_prefix(&self) -> String {
        self.key("d:", "")
    }

    /// Sorted set, all scores 0: dead delivery ids in id (creation) order.
    pub fn dlq(&self) -> String {
        self.key("dlq", "")
    }

    /// Sorted set, all scores 0: the dead delivery ids of one channel.
    pub fn dlq_channel(&self, channel: &str) -> String {
        self.key("dlq:", channel)
    }

    /// String: `Sequence` JSON; expires `retention_s` after it became final.
    pub fn sequence(&self, id: &str) -> String {
        self.key("sequence:", id)
    }

    /// Sorted set, all scores 0: the ids of the sequences that are not final.
    pub fn open_sequences(&self) -> String {
        self.key("sequences", "")
    }

    /// String: `IdempotencyEntry` JSON, with a Redis expiry at the entry's `expires_at`.
    pub fn idempotency(&self, key: &str) -> String {
        self.key("idem:", key)
    }

    /// Sorted set: score expiry in Unix ms, member idempotency key; what recovery reads instead of a scan.
    pub fn idempotency_index(&self) -> String {
        self.key("idempotency", "")
    }

    /// Sorted set, all scores 0: a user's inbox item ids (newest = greatest), capped at `inbox_cap`.
    pub fn inbox(&self, user_id: &str) -> String {
        self.key("inbox:ids:", user_id)
    }

    /// Hash: item id → `InboxItem` JSON as it was put.
    pub fn inbox_items(&self, user_id: &str) -> String {
        self.key("inbox:items:", user_id)
    }

    /// Sorted set, all scores 0: a user's unread item ids; its size is the unread count.
    pub fn inbox_unread(&self, user_id: &str) -> String {
        self.key("inbox:unread:", user_id)
    }

    /// Hash: item id → `read_at` (JSON) of items marked read after they were put.
    pub fn inbox_read(&self, user_id: &str) -> String {
        self.key("inbox:read:", user_id)
    }
}

/// The member of a scheduled notification in [`Keys::scheduled`]: its due ms as 16 hex digits with the sign bit
/// flipped (so byte order is numeric order, negative times included), `:`, then its id. With every score 0,
/// `ZRANGEBYLEX` pages through it in (due, id) order however many entries share a due time.
pub fn scheduled_member(due_ms: i64, id: &str) -> String {
    format!("{}:{id}", sortable(due_ms))
}

/// An exclusive `ZRANGEBYLEX` upper bound above every member due at or before `until_ms` (`;` sorts right after
/// `:`).
pub fn scheduled_until(until_ms: i64) -> String {
    format!("({};", sortable(until_ms))
}

fn sortable(ms: i64) -> String {
    format!("{:016x}", (ms as u64) ^ (1 << 63))
}
