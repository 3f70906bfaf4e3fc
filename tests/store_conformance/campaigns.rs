//! The conformance suite's campaign part, re-exported by `suite`: campaign records and the active index,
//! explicit audience pages, final-status counts, and the user id and tag indexes `user_ids` pages through.
//! Plus the one Redis-only check the trait cannot see: users written before the user id index existed.

use std::collections::BTreeMap;
use std::sync::Arc;

use herald::config::{RedisSettings, Secret};
use herald::domain::*;
use herald::store::{RedisStore, Store, Write};
use jiff::Timestamp;

use crate::Backend;
use crate::common::redis::RedisServer;
use crate::common::*;

/// A campaign record with `processed` users done.
pub fn campaign(id: &str, status: CampaignStatus, audience: Audience) -> Arc<Campaign> {
    Arc::new(Campaign {
        id: id.to_string(),
        name: Some(format!("campaign {id}")),
        status,
        template_id: "order_shipped".into(),
        params: BTreeMap::from([("item".to_string(), "book".to_string())]),
        channels: vec![Channel::Push, Channel::Email],
        category: Category::Promotion,
        cursor: CampaignCursor::start(&audience),
        audience,
        rate_per_second: Some(500),
        send_at: None,
        progress: Progress { processed: 7, accepted: 5, skipped: 2 },
        finals: FinalCounts::default(),
        created_at: Timestamp::UNIX_EPOCH,
        started_at: Some(Timestamp::UNIX_EPOCH),
        finished_at: None,
        updated_at: Timestamp::UNIX_EPOCH,
    })
}

fn with_status(c: &Campaign, status: CampaignStatus) -> Write {
    Write::PutCampaign(Arc::new(Campaign { status, ..c.clone() }))
}

fn tagged(id: &str, tags: &[&str]) -> Write {
    let mut user = (*user(id)).clone();
    user.tags = tags.iter().map(|t| t.to_string()).collect();
    Write::PutUser(Arc::new(user))
}

fn page(campaign: &str, page: u32, ids: &[String]) -> Write {
    Write::PutAudiencePage { campaign: campaign.into(), page, user_ids: ids.iter().cloned().collect() }
}

fn count(campaign: &str, status: NotificationStatus, delta: i64) -> Write {
    Write::CountCampaignFinal { campaign: campaign.into(), status, delta }
}

fn ids(campaigns: &[Campaign]) -> Vec<&str> {
    campaigns.iter().map(|c| c.id.as_str()).collect()
}

pub async fn campaigns_round_trip_and_only_active_ones_are_listed(store: Arc<dyn Store>) {
    assert_eq!(store.campaign("c1").await.unwrap(), None);
    assert!(store.active_campaigns().await.unwrap().is_empty());
    let tag = Audience::Tag { tag: "vip".into() };
    let (c1, c2, c3, c4) = (
        campaign("c1", CampaignStatus::Running, Audience::AllUsers),
        campaign("c2", CampaignStatus::Scheduled, tag.clone()),
        campaign("c3", CampaignStatus::Completed, tag.clone()),
        campaign("c4", CampaignStatus::Paused, Audience::UserIds { size: 3, pages: 1 }),
    );
    let puts = [&c4, &c3, &c1, &c2].map(|c| Write::PutCampaign(Arc::clone(c)));
    store.commit(puts.to_vec()).await.unwrap();
    let active = store.active_campaigns().await.unwrap();
    assert_eq!(ids(&active), ["c1", "c2", "c4"], "scheduled, running and paused ones, in id order");
    assert_eq!(active[1], *c2, "whole records");
    assert_eq!(store.campaign("c3").await.unwrap(), Some((*c3).clone()), "an ended one stays readable");

    let mut moved = (*c1).clone();
    moved.cursor = CampaignCursor::After { after: Some("u42".into()) };
    moved.progress = Progress { processed: 42, accepted: 40, skipped: 2 };
    store.commit(vec![Write::PutCampaign(Arc::new(moved.clone()))]).await.unwrap();
    assert_eq!(store.campaign("c1").await.unwrap(), Some(moved.clone()), "a put replaces: cursor and progress");

    store
        .commit(vec![with_status(&moved, CampaignStatus::Cancelled), with_status(&c2, CampaignStatus::Running)])
        .await
        .unwrap();
    assert_eq!(ids(&store.active_campaigns().await.unwrap()), ["c2", "c4"]);
    store.commit(vec![with_status(&c4, CampaignStatus::Running)]).await.unwrap();
    assert_eq!(ids(&store.active_campaigns().await.unwrap()), ["c2", "c4"], "the same one once");
}

pub async fn audience_pages_round_trip_and_go_when_the_campaign_ends(store: Arc<dyn Store>) {
    let users = |from: u32, to: u32| (from..to).map(|n| format!("user-{n}")).collect::<Vec<_>>();
    let c1 = campaign("c1", CampaignStatus::Running, Audience::UserIds { size: 2_500, pages: 3 });
    let c2 = campaign("c2", CampaignStatus::Running, Audience::UserIds { size: 10, pages: 1 });
    let writes = vec![
        Write::PutCampaign(c1.clone()),
        page("c1", 0, &users(0, 1_000)),
        page("c1", 1, &users(1_000, 2_000)),
        page("c1", 2, &users(2_000, 2_500)),
        Write::PutCampaign(c2.clone()),
        page("c2", 0, &users(0, 10)),
    ];
    store.commit(writes).await.unwrap();
    assert_eq!(store.audience_page("c1", 1).await.unwrap(), Some(users(1_000, 2_000)), "as written, in order");
    assert_eq!(store.audience_page("c1", 2).await.unwrap(), Some(users(2_000, 2_500)));
    assert_eq!(store.audience_page("c1", 3).await.unwrap(), None, "past the last page");
    assert_eq!(store.audience_page("nope", 0).await.unwrap(), None);

    store.commit(vec![with_status(&c1, CampaignStatus::Paused)]).await.unwrap();
    assert_eq!(store.audience_page("c1", 0).await.unwrap(), Some(users(0, 1_000)), "a paused one keeps them");
    store.commit(vec![with_status(&c1, CampaignStatus::Completed)]).await.unwrap();
    for n in 0..3 {
        assert_eq!(store.audience_page("c1", n).await.unwrap(), None, "an ended campaign's pages are gone");
    }
    assert_eq!(store.audience_page("c2", 0).await.unwrap(), Some(users(0, 10)), "not another campaign's");
    store.commit(vec![with_status(&c2, CampaignStatus::Cancelled)]).await.unwrap();
    assert_eq!(store.audience_page("c2", 0).await.unwrap(), None);
}

pub async fn campaign_final_counts_add_up_beside_the_record(store: Arc<dyn Store>) {
    let c1 = campaign("c1", CampaignStatus::Running, Audience::AllUsers);
    // Counts may land before or after any record put; a put never resets them.
    let mut writes = vec![count("c1", NotificationStatus::Completed, 1)];
    writes.push(Write::PutCampaign(c1.clone()));
    writes.extend((0..3).map(|_| count("c1", NotificationStatus::Completed, 1)));
    writes.push(count("c1", NotificationStatus::Failed, 1));
    writes.push(count("c1", NotificationStatus::Cancelled, 1));
    writes.push(count("c1", NotificationStatus::Dispatching, 1));
    writes.push(count("c2", NotificationStatus::Failed, 1));
    store.commit(writes).await.unwrap();
    let finals = |c: Option<Campaign>| c.expect("stored").finals;
    let expected = FinalCounts { completed: 4, failed: 1, cancelled: 1 };
    assert_eq!(finals(store.campaign("c1").await.unwrap()), expected, "a status that is not final counts nothing");

    // A DLQ replay takes a failed one back; it then completes.
    store
        .commit(vec![count("c1", NotificationStatus::Failed, -1), count("c1", NotificationStatus::Completed, 1)])
        .await
        .unwrap();
    let mut put_again = (*c1).clone();
    put_again.finals = FinalCounts { completed: 99, failed: 99, cancelled: 99 };
    store.commit(vec![Write::PutCampaign(Arc::new(put_again))]).await.unwrap();
    let expected = FinalCounts { completed: 5, failed: 0, cancelled: 1 };
    assert_eq!(finals(store.campaign("c1").await.unwrap()), expected, "the record's own finals are ignored");
    assert_eq!(store.active_campaigns().await.unwrap()[0].finals, expected, "active campaigns carry them too");
    let c2 = campaign("c2", CampaignStatus::Running, Audience::AllUsers);
    store.commit(vec![Write::PutCampaign(c2)]).await.unwrap();
    assert_eq!(finals(store.campaign("c2").await.unwrap()).failed, 1, "counted before the record existed");
    let c3 = campaign("c3", CampaignStatus::Running, Audience::AllUsers);
    store.commit(vec![Write::PutCampaign(c3)]).await.unwrap();
    assert_eq!(finals(store.campaign("c3").await.unwrap()), FinalCounts::default());
}

pub async fn user_ids_page_in_id_order_by_tag_as_tags_change(store: Arc<dyn Store>) {
    assert!(store.user_ids(None, None, 10).await.unwrap().is_empty());
    let writes = vec![
        tagged("u2", &["vip", "gold"]),
        tagged("u10", &["vip"]),
        tagged("u1", &[]),
        tagged("u3", &["vip"]),
        tagged("vip", &["gold"]),
    ];
    store.commit(writes).await.unwrap();
    let page = |after: Option<&'static str>, tag: Option<&'static str>, limit| {
        let store = store.clone();
        async move { store.user_ids(after, tag, limit).await.unwrap() }
    };
    assert_eq!(page(None, None, 10).await, ["u1", "u10", "u2", "u3", "vip"], "byte order of ids");
    assert_eq!(page(None, None, 2).await, ["u1", "u10"], "at most limit");
    assert_eq!(page(Some("u10"), None, 2).await, ["u2", "u3"], "after is exclusive");
    assert_eq!(page(Some("u15"), None, 10).await, ["u2", "u3", "vip"], "a cursor need not be an id");
    assert!(page(Some("vip"), None, 10).await.is_empty());
    assert!(page(None, None, 0).await.is_empty());
    assert_eq!(page(None, Some("vip"), 10).await, ["u10", "u2", "u3"], "a user id equal to a tag is no member");
    assert_eq!(page(Some("u10"), Some("vip"), 1).await, ["u2"]);
    assert_eq!(page(None, Some("gold"), 10).await, ["u2", "vip"]);
    assert!(page(None, Some("vi"), 10).await.is_empty(), "a tag is matched whole, not as a prefix");

    // u2 loses vip and keeps gold; u3 drops every tag; u1 gains vip; a second identical put changes nothing.
    let writes = vec![tagged("u2", &["gold"]), tagged("u3", &[]), tagged("u1", &["vip"]), tagged("u1", &["vip"])];
    store.commit(writes).await.unwrap();
    assert_eq!(page(None, Some("vip"), 10).await, ["u1", "u10"]);
    assert_eq!(page(None, Some("gold"), 10).await, ["u2", "vip"]);
    assert_eq!(page(None, None, 10).await.len(), 5, "every user still listed");
    let stored: Vec<(String, Vec<String>)> = {
        let mut users: Vec<_> = store.users().await.unwrap().into_iter().map(|u| (u.id, u.tags)).collect();
        users.sort();
        users
    };
    assert_eq!(stored[0], ("u1".to_string(), vec!["vip".to_string()]), "tags are part of the record");
}

pub async fn campaigns_survive_close_and_reopen<B: Backend>(backend: &B) {
    let c1 = campaign("c1", CampaignStatus::Paused, Audience::UserIds { size: 2, pages: 1 });
    let writes = vec![
        Write::PutCampaign(c1.clone()),
        page("c1", 0, &["u1".to_string(), "u2".to_string()]),
        count("c1", NotificationStatus::Completed, 1),
        tagged("u1", &["vip"]),
    ];
    let store = backend.open();
    store.commit(writes).await.unwrap();
    drop(store);

    let store = backend.open();
    let expected = Campaign { finals: FinalCounts { completed: 1, ..FinalCounts::default() }, ..(*c1).clone() };
    assert_eq!(store.active_campaigns().await.unwrap(), vec![expected]);
    assert_eq!(store.audience_page("c1", 0).await.unwrap(), Some(vec!["u1".to_string(), "u2".to_string()]));
    assert_eq!(store.user_ids(None, Some("vip"), 10).await.unwrap(), ["u1"]);
}

/// Redis: a store written before the user id index existed (users in the hash only) is indexed when opened,
/// so an `all_users` campaign reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_indexes_users_written_before_the_user_id_index_existed() {
    let Some(server) = RedisServer::start() else { return };
    let settings = RedisSettings { url: Secret::new(server.url()), ..RedisSettings::default() };
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for id in ["old-2", "old-1"] {
        let json = serde_json::to_string(&*user(id)).unwrap();
        let _: () = ::redis::cmd("HSET")
            .arg(format!("{}users", settings.prefix))
            .arg(id)
            .arg(json)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let store = RedisStore::open(&settings, 64).await.unwrap();
    assert_eq!(store.user_ids(None, None, 10).await.unwrap(), ["old-1", "old-2"]);
    store.commit(vec![tagged("new", &[])]).await.unwrap();
    drop(store);
    let store = RedisStore::open(&settings, 64).await.unwrap();
    assert_eq!(store.user_ids(None, None, 10).await.unwrap(), ["new", "old-1", "old-2"]);
}
