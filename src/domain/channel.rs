//! The small closed vocabularies of the API: channels, priorities, categories, strategies, platforms, providers.

use serde::{Deserialize, Serialize};

/// A way of reaching a person. Serialized in snake_case (`in_app`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Push,
    Email,
    Sms,
    Alimtalk,
    InApp,
}

impl Channel {
    pub const ALL: [Channel; 5] = [Channel::Push, Channel::Email, Channel::Sms, Channel::Alimtalk, Channel::InApp];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Push => "push",
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Alimtalk => "alimtalk",
            Channel::InApp => "in_app",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Priority of a notification; each is one lane of every dispatcher, served strictly in this order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Normal, Priority::Low];

    /// Lane index: 0 is served first.
    pub fn lane(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// What a notification is about; preferences toggle channels per category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    #[default]
    Transaction,
    AccountSecurity,
    Announcement,
    Promotion,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Transaction => "transaction",
            Category::AccountSecurity => "account_security",
            Category::Announcement => "announcement",
            Category::Promotion => "promotion",
        }
    }
}

/// How the channels of one notification are used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Every channel at once.
    #[default]
    Parallel,
    /// Channels in the given order; the next only when the previous one did not deliver.
    Priority,
}

/// A device's platform, which picks the push provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Ios,
    Android,
    Web,
}

/// The provider protocol a delivery goes out through. One dispatcher per provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Fcm,
    Apns,
    Smtp,
    Twilio,
    Bizppurio,
    Inbox,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 6] = [
        ProviderKind::Fcm,
        ProviderKind::Apns,
        ProviderKind::Smtp,
        ProviderKind::Twilio,
        ProviderKind::Bizppurio,
        ProviderKind::Inbox,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Fcm => "fcm",
            ProviderKind::Apns => "apns",
            ProviderKind::Smtp => "smtp",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Bizppurio => "bizppurio",
            ProviderKind::Inbox => "inbox",
        }
    }

    pub fn channel(self) -> Channel {
        match self {
            ProviderKind::Fcm | ProviderKind::Apns => Channel::Push,
            ProviderKind::Smtp => Channel::Email,
            ProviderKind::Twilio => Channel::Sms,
            ProviderKind::Bizppurio => Channel::Alimtalk,
            ProviderKind::Inbox => Channel::InApp,
        }
    }

    /// The providers a channel goes out through; the first is the one named on a `filtered` delivery.
    pub fn for_channel(channel: Channel) -> &'static [ProviderKind] {
        match channel {
            Channel::Push => &[ProviderKind::Fcm, ProviderKind::Apns],
            Channel::Email => &[ProviderKind::Smtp],
            Channel::Sms => &[ProviderKind::Twilio],
            Channel::Alimtalk => &[ProviderKind::Bizppurio],
            Channel::InApp => &[ProviderKind::Inbox],
        }
    }

    /// The providers any of `channels` goes out through.
    pub fn for_channels(channels: &[Channel]) -> impl Iterator<Item = ProviderKind> + '_ {
        channels.iter().flat_map(|c| ProviderKind::for_channel(*c).iter().copied())
    }

    /// The provider for a push token of this platform.
    pub fn for_platform(platform: Platform) -> ProviderKind {
        match platform {
            Platform::Ios => ProviderKind::Apns,
            Platform::Android | Platform::Web => ProviderKind::Fcm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip_through_serde_and_parse() {
        for c in Channel::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(Channel::parse(c.as_str()), Some(c));
        }
        assert_eq!(Channel::parse("fax"), None);
    }

    #[test]
    fn lanes_are_served_critical_first() {
        assert!(Priority::Critical.lane() < Priority::High.lane());
        assert!(Priority::Normal.lane() < Priority::Low.lane());
        assert_eq!(Priority::default(), Priority::Normal);
    }
}
