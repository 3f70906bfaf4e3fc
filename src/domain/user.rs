//! Users (recipients), their devices and their preferences.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Category, Channel, Platform};

/// A recipient known to Herald. Contacts are stored normalized (E.164 phones, checked e-mails).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Phone used for KakaoTalk alimtalk; defaults to `phone` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kakao_phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA time zone name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub preferences: Preferences,
    /// Labels campaigns can target (`audience: {tag}`); at most [`super::MAX_TAGS`], each [`super::valid_tag`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl User {
    pub fn new(id: String, now: Timestamp) -> User {
        User {
            id,
            email: None,
            phone: None,
            kakao_phone: None,
            locale: None,
            timezone: None,
            devices: Vec::new(),
            preferences: Preferences::default(),
            tags: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The phone alimtalk goes to.
    pub fn alimtalk_phone(&self) -> Option<&str> {
        self.kakao_phone.as_deref().or(self.phone.as_deref())
    }

    /// Adds a device, or refreshes its platform if the token is already known. Returns true if it was new.
    pub fn upsert_device(&mut self, device: Device) -> bool {
        match self.devices.iter_mut().find(|d| d.token == device.token) {
            Some(existing) => {
                existing.platform = device.platform;
                false
            }
            None => {
                self.devices.push(device);
                true
            }
        }
    }

    /// Removes a device by token. Returns true if it was there.
    pub fn remove_device(&mut self, token: &str) -> bool {
        let before = self.devices.len();
        self.devices.retain(|d| d.token != token);
        before != self.devices.len()
    }
}

/// A push target: one app installation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub token: String,
    pub platform: Platform,
    pub created_at: Timestamp,
}

/// Per-user opt-ins. Everything is on unless turned off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    #[serde(default)]
    pub categories: BTreeMap<Category, BTreeMap<Channel, bool>>,
    /// Channel toggles for promotional messages, on top of the `promotion` category.
    #[serde(default)]
    pub promotion: BTreeMap<Channel, bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
}

/// A daily window, in the user's time zone, in which non-critical sends are deferred.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// `HH:MM`
    pub start: String,
    /// `HH:MM`
    pub end: String,
}

impl Preferences {
    /// Whether this user accepts `category` messages on `channel`.
    pub fn allows(&self, category: Category, channel: Channel) -> bool {
        let by_category =
            self.categories.get(&category).and_then(|channels| channels.get(&channel)).copied().unwrap_or(true);
        let by_promotion = category != Category::Promotion || self.promotion.get(&channel).copied().unwrap_or(true);
        by_category && by_promotion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_allowed_by_default() {
        let prefs = Preferences::default();
        for ch in Channel::ALL {
            assert!(prefs.allows(Category::Promotion, ch));
            assert!(prefs.allows(Category::Transaction, ch));
        }
    }

    #[test]
    fn category_and_promotion_toggles_turn_channels_off() {
        let prefs: Preferences =
            serde_json::from_str(r#"{"categories":{"announcement":{"sms":false}},"promotion":{"push":false}}"#)
                .unwrap();
        assert!(!prefs.allows(Category::Announcement, Channel::Sms));
        assert!(prefs.allows(Category::Announcement, Channel::Push));
        assert!(!prefs.allows(Category::Promotion, Channel::Push));
        assert!(prefs.allows(Category::Transaction, Channel::Push));
    }

    #[test]
    fn devices_are_unique_by_token() {
        let now = Timestamp::UNIX_EPOCH;
        let mut user = User::new("u".into(), now);
        let dev = |p| Device { token: "t1".into(), platform: p, created_at: now };
        assert!(user.upsert_device(dev(Platform::Ios)));
        assert!(!user.upsert_device(dev(Platform::Android)));
        assert_eq!(user.devices.len(), 1);
        assert_eq!(user.devices[0].platform, Platform::Android);
        assert!(user.remove_device("t1"));
        assert!(!user.remove_device("t1"));
    }
}
