//! Turns [`Write`]s into Redis commands on the submitting thread: records become JSON once, keys are built, and
//! the writer task only appends the commands to its batch's MULTI/EXEC.

use ::redis::Cmd;

use super::keys::{Keys, scheduled_member};
use super::scripts::{self, LuaScript};
use crate::domain::{DeliveryStatus, NotificationStatus};
use crate::store::codec::to_json;
use crate::store::{Placement, StoreError, Write};

/// The field of a campaign's finals hash ([`Keys::campaign_finals`]) that counts `status`.
pub fn final_field(status: NotificationStatus) -> Option<&'static str> {
    match status {
        NotificationStatus::Completed => Some("completed"),
        NotificationStatus::Failed => Some("failed"),
        NotificationStatus::Cancelled => Some("cancelled"),
        _ => None,
    }
}

/// What the encoding depends on besides the writes.
#[derive(Clone, Debug)]
pub struct Layout {
    pub keys: Keys,
    pub inbox_cap: usize,
    pub retention_s: u64,
}

/// One submission's commands.
#[derive(Debug, Default)]
pub struct Encoded {
    pub cmds: Vec<Cmd>,
    /// Bits of the scripts (`scripts::SCRIPTS`) the commands call, so the batch loads exactly those.
    pub scripts: u8,
    /// Writes it came from, for the batch bound.
    pub writes: usize,
}

impl Encoded {
    fn script(&mut self, script: &LuaScript, numkeys: usize) -> &mut Cmd {
        self.scripts |= 1 << script.bit;
        self.cmds.push(script.call(numkeys));
        self.cmds.last_mut().expect("just pushed")
    }

    fn cmd(&mut self, name: &str) -> &mut Cmd {
        self.cmds.push(::redis::cmd(name));
        self.cmds.last_mut().expect("just pushed")
    }
}

/// Encodes a submission. `now_ms` decides whether an idempotency entry is already expired. Fails only if a
/// record cannot be serialized, which the domain types never cause.
pub fn encode(layout: &Layout, writes: Vec<Write>, now_ms: i64) -> Result<Encoded, StoreError> {
    let keys = &layout.keys;
    let mut out = Encoded { cmds: Vec::with_capacity(writes.len()), scripts: 0, writes: writes.len() };
    for write in writes {
        match write {
            Write::PutUser(user) => {
                out.script(scripts::put_user(), 3)
                    .arg(keys.users())
                    .arg(keys.user_ids())
                    .arg(keys.user_tags())
                    .arg(&user.id)
                    .arg(to_json(&*user)?)
                    .arg(keys.tag_prefix())
                    .arg(user.tags.join(" "));
            }
            Write::PutTemplate(template) => {
                out.cmd("HSET").arg(keys.templates()).arg(&template.id).arg(to_json(&*template)?);
            }
            Write::PutNotification(n) => {
                let json = to_json(&*n)?;
                let (placement, member) = match Placement::of(&n) {
                    Placement::Open => ("open", String::new()),
                    Placement::Scheduled(due_ms) => ("scheduled", scheduled_member(due_ms, &n.id)),
                    Placement::Final => ("final", String::new()),
                };
                out.script(scripts::put_notification(), 7)
                    .arg(keys.notification(&n.id))
                    .arg(keys.open())
                    .arg(keys.max_seq())
                    .arg(keys.deliveries_of(&n.id))
                    .arg(keys.dlq())
                    .arg(keys.scheduled())
                    .arg(keys.scheduled_members())
                    .arg(&n.id)
                    .arg(n.seq)
                    .arg(json)
                    .arg(placement)
                    .arg(layout.retention_s)
                    .arg(keys.delivery_prefix())
                    .arg(member);
            }
            Write::PutDelivery(d) => {
                let json = to_json(&*d)?;
                let dead = if d.status == DeliveryStatus::Dead { "1" } else { "0" };
                out.script(scripts::put_delivery(), 5)
                    .arg(keys.delivery(&d.id))
                    .arg(keys.deliveries_of(&d.notification_id))
                    .arg(keys.notification(&d.notification_id))
                    .arg(keys.dlq())
                    .arg(keys.dlq_channel(d.channel.as_str()))
                    .arg(&d.id)
                    .arg(json)
                    .arg(dead)
                    .arg(keys.delivery_prefix());
            }
            Write::PutIdempotency { key, entry } => {
                let expiry_ms = entry.expires_at.as_millisecond();
                if expiry_ms > now_ms {
                    out.cmd("SET").arg(keys.idempotency(&key)).arg(to_json(&entry)?).arg("PXAT").arg(expiry_ms);
                    out.cmd("ZADD").arg(keys.idempotency_index()).arg(expiry_ms).arg(&key);
                } else {
                    // Already expired: like a put followed by its expiry.
                    out.cmd("DEL").arg(keys.idempotency(&key));
                    out.cmd("ZREM").arg(keys.idempotency_index()).arg(&key);
                }
            }
            Write::PutInboxItem(item) => {
                let json = to_json(&*item)?;
                let unread = if item.read_at.is_none() { "1" } else { "0" };
                out.script(scripts::put_inbox_item(), 4)
                    .arg(keys.inbox(&item.user_id))
                    .arg(keys.inbox_items(&item.user_id))
                    .arg(keys.inbox_unread(&item.user_id))
                    .arg(keys.inbox_read(&item.user_id))
                    .arg(&item.id)
                    .arg(json)
                    .arg(unread)
                    .arg(layout.inbox_cap);
            }
            Write::MarkInboxRead { user_id, ids, at } => {
                if !ids.is_empty() {
                    out.script(scripts::mark_read(), 2)
                        .arg(keys.inbox_unread(&user_id))
                        .arg(keys.inbox_read(&user_id))
                        .arg(to_json(&at)?)
                        .arg(ids);
                }
            }
            Write::MarkAllInboxRead { user_id, at } => {
                out.script(scripts::mark_all_read(), 2)
                    .arg(keys.inbox_unread(&user_id))
                    .arg(keys.inbox_read(&user_id))
                    .arg(to_json(&at)?);
            }
            Write::PutSequence(sequence) => {
                let json = to_json(&*sequence)?;
                let key = keys.sequence(&sequence.id);
                if sequence.status.is_final() {
                    out.cmd("SET").arg(key).arg(json).arg("EX").arg(layout.retention_s);
                    out.cmd("ZREM").arg(keys.open_sequences()).arg(&sequence.id);
                } else {
                    // A plain SET also drops an expiry left by an earlier final put.
                    out.cmd("SET").arg(key).arg(json);
                    out.cmd("ZADD").arg(keys.open_sequences()).arg(0).arg(&sequence.id);
                }
            }
            Write::PutCampaign(campaign) => {
                out.cmd("SET").arg(keys.campaign(&campaign.id)).arg(to_json(&*campaign)?);
                if campaign.status.is_active() {
                    out.cmd("ZADD").arg(keys.active_campaigns()).arg(0).arg(&campaign.id);
                } else {
                    out.cmd("ZREM").arg(keys.active_campaigns()).arg(&campaign.id);
                    out.cmd("DEL").arg(keys.audience(&campaign.id));
                }
            }
            Write::PutAudiencePage { campaign, page, user_ids } => {
                out.cmd("HSET").arg(keys.audience(&campaign)).arg(page).arg(to_json(&user_ids)?);
            }
            Write::CountCampaignFinal { campaign, status, delta } => {
                if let Some(field) = final_field(status) {
                    out.cmd("HINCRBY").arg(keys.campaign_finals(&campaign)).arg(field).arg(delta);
                }
            }
        }
    }
    Ok(out)
}
