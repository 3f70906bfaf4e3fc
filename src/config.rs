//! Configuration in layers: `config/default.toml` → `config/<profile>.toml` → `HERALD__SECTION__KEY` environment
//! variables, deserialized into typed structs (`deny_unknown_fields`) and checked by [`Settings::validate`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::ProviderKind;

/// A secret (auth token, password). Never printed: `Debug` and `Display` show `***`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Everything Herald reads at start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub profile: String,
    pub server: ServerSettings,
    pub store: StoreSettings,
    pub engine: EngineSettings,
    pub scheduling: SchedulingSettings,
    pub providers: ProvidersSettings,
    pub sandbox: crate::sandbox::SandboxSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Base URL providers call back (webhooks). Empty: `http://<listen>`.
    #[serde(default)]
    pub public_url: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest `POST /v1/campaigns` body, in bytes: room for an explicit list of up to 1,000,000 user ids.
    #[serde(default = "default_campaign_body_bytes")]
    pub max_campaign_body_bytes: usize,
    pub request_timeout_ms: u64,
}

fn default_campaign_body_bytes() -> usize {
    32 * 1024 * 1024
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `embedded` (record segments under `data_dir`) or `redis` (`[store.redis]`).
    pub backend: String,
    pub data_dir: PathBuf,
    /// Most writes in one group commit.
    pub commit_batch_max: usize,
    /// Used when `backend = "redis"`.
    #[serde(default)]
    pub redis: RedisSettings,
}

/// `[store.redis]`: the Redis backend (`docs/store.md`, "Redis backend").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`; a secret because it may carry the password.
    pub url: Secret,
    /// Prefix of every key Herald writes, so one Redis can hold several deployments.
    pub prefix: String,
    /// Bound on every Redis call (and on each group commit); past it the call fails as unavailable (503).
    pub command_timeout_ms: u64,
    /// Most items kept per user inbox; older ones are trimmed in the commit that adds a new one.
    pub inbox_cap: usize,
    /// Seconds a final notification (with its deliveries) is kept before Redis expires it.
    pub retention_s: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: Secret::new("redis://127.0.0.1:6379"),
            prefix: "herald:".into(),
            command_timeout_ms: 2000,
            inbox_cap: 1000,
            retention_s: 7 * 24 * 3600,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Shard actors; users are spread over them by a hash of their id.
    pub shards: usize,
    /// Requests a shard may have waiting before new ones are refused with 429.
    pub shard_pending_max: usize,
    /// Deliveries a dispatcher may hold (all lanes) before new notifications are refused with 429.
    pub queue_capacity: usize,
    /// Retries after the first attempt before a delivery is dead-lettered.
    pub max_retries: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Idempotency keys are remembered this long.
    pub idempotency_ttl_s: u64,
    /// Identical requests without a key within this window are duplicates.
    pub dedupe_window_s: u64,
    /// Seconds a client is told to wait on 429.
    pub retry_after_s: u64,
    /// A delivery the provider accepted (`sent`) fails with `report_timeout` if no delivery report arrives
    /// within this long (the report was lost); a late report then changes nothing.
    pub report_timeout_ms: u64,
}

/// Scheduled sends (`send_at`), quiet hours and sequences; see `docs/scheduling.md`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulingSettings {
    /// `send_at` must be at least this far in the future.
    pub min_lead_s: u64,
    /// ... and at most this far.
    pub max_lead_s: u64,
    /// A scheduled notification can be changed (PATCH) until this long before it is due.
    pub patch_cutoff_s: u64,
    /// Scheduled notifications due within this window are loaded from the store's index into the shards'
    /// timers ahead of time. Must be shorter than `patch_cutoff_s`, so a PATCH never meets a loaded one.
    pub horizon_s: u64,
    /// How often the loader reads the next slice of the index.
    pub load_interval_ms: u64,
    /// Scheduled notifications read from the index per round trip.
    pub load_batch: usize,
    /// At most about this many scheduled notifications are held in the shards' memory (timers and held due
    /// sends); the loader reads the next ones as these fire. Bounds the memory of a spike larger than the
    /// horizon's share of it.
    pub max_loaded: usize,
    /// A due scheduled send fires only while each dispatcher it needs holds fewer than this many jobs it would
    /// wait behind (and fewer than half `engine.queue_capacity`); otherwise it waits in its shard, still
    /// `scheduled` (`shard/held.rs`). Short enough that an overloaded spike's sends are committed and planned
    /// just before they go, not seconds ahead with their state gone cold; long enough to cover the shard's
    /// 10 ms look between refills.
    pub fire_ahead: usize,
    /// A sequence step's default time limit (the request's `step_timeout` overrides it).
    pub step_timeout_s: u64,
}

/// Rate and concurrency limits of one provider's dispatcher.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchLimits {
    pub rate_per_second: u32,
    pub burst: u32,
    /// Sends handed to the provider whose outcome is not durable yet: the bound on duplicates after a crash.
    pub max_in_flight: usize,
    /// Of those, requests waiting for the provider's answer at once (the connection's concurrency); absent or
    /// above `max_in_flight`: `max_in_flight`. An answered send keeps only its `max_in_flight` slot while its
    /// outcome is committed.
    #[serde(default)]
    pub max_requests: Option<usize>,
}

impl DispatchLimits {
    /// Requests waiting for the provider's answer at once.
    pub fn requests_cap(&self) -> usize {
        self.max_requests.map_or(self.max_in_flight, |n| n.min(self.max_in_flight))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersSettings {
    /// Request timeout for provider HTTP calls.
    pub timeout_ms: u64,
    /// A PEM file of extra root certificates every provider client trusts (e.g. the sandbox's CA when it runs in
    /// another process); empty: the system's roots only.
    #[serde(default)]
    pub extra_root_ca_file: String,
    /// Extra roots handed over in-process (the in-process sandbox's CA); never read from configuration.
    #[serde(skip)]
    pub extra_root_ca_pem: Option<String>,
    pub limits: BTreeMap<ProviderKind, DispatchLimits>,
    pub fcm: crate::providers::fcm::FcmSettings,
    pub apns: crate::providers::apns::ApnsSettings,
    pub smtp: crate::providers::smtp::SmtpSettings,
    pub twilio: crate::providers::twilio::TwilioSettings,
    pub bizppurio: crate::providers::bizppurio::BizppurioSettings,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

impl Settings {
    /// Loads `dir/default.toml`, then `dir/<profile>.toml` if it exists, then `HERALD__…` variables from `env`.
    pub fn load(dir: &Path, profile: &str, env: Env) -> Result<Settings, ConfigError> {
        let mut figment =
            Figment::from(Serialized::default("profile", profile)).merge(Toml::file(dir.join("default.toml")));
        let profile_file = dir.join(format!("{profile}.toml"));
        if profile != "default" {
            if !profile_file.exists() {
                return Err(ConfigError::Load(format!("profile file {} not found", profile_file.display())));
            }
            figment = figment.merge(Toml::file(profile_file));
        }
        let settings: Settings = figment
            .merge(Serialized::default("profile", profile))
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// The process environment's `HERALD__SECTION__KEY` variables.
    pub fn env() -> Env {
        Env::prefixed("HERALD__").split("__").lowercase(true)
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| Err(ConfigError::Invalid { field, message: message.to_string() });
        match self.store.backend.as_str() {
            "embedded" => {}
            "redis" => {
                let redis = &self.store.redis;
                if redis.prefix.is_empty() {
                    return invalid("store.redis.prefix", "must not be empty");
                }
                if redis.command_timeout_ms == 0 {
                    return invalid("store.redis.command_timeout_ms", "must be at least 1");
                }
                if redis.inbox_cap == 0 {
                    return invalid("store.redis.inbox_cap", "must be at least 1");
                }
                if redis.retention_s == 0 {
                    return invalid("store.redis.retention_s", "must be at least 1");
                }
            }
            _ => return invalid("store.backend", "must be `embedded` or `redis`"),
        }
        if self.store.commit_batch_max == 0 {
            return invalid("store.commit_batch_max", "must be at least 1");
        }
        let sched = &self.scheduling;
        if sched.max_lead_s <= sched.min_lead_s {
            return invalid("scheduling.max_lead_s", "must be greater than scheduling.min_lead_s");
        }
        if sched.horizon_s == 0 || sched.horizon_s >= sched.patch_cutoff_s {
            return invalid("scheduling.horizon_s", "must be at least 1 and less than scheduling.patch_cutoff_s");
        }
        if sched.load_interval_ms == 0 || sched.load_interval_ms >= sched.horizon_s * 1000 {
            return invalid("scheduling.load_interval_ms", "must be at least 1 and less than the horizon");
        }
        if sched.load_batch == 0 || sched.step_timeout_s == 0 {
            return invalid("scheduling.load_batch", "load_batch and step_timeout_s must be at least 1");
        }
        if sched.max_loaded == 0 {
            return invalid("scheduling.max_loaded", "must be at least 1");
        }
        if sched.fire_ahead == 0 {
            return invalid("scheduling.fire_ahead", "must be at least 1");
        }
        if self.engine.shards == 0 || self.engine.shards > 4096 {
            return invalid("engine.shards", "must be between 1 and 4096");
        }
        if self.engine.queue_capacity == 0 || self.engine.shard_pending_max == 0 {
            return invalid("engine.queue_capacity", "queue sizes must be at least 1");
        }
        if self.engine.retry_base_ms == 0 || self.engine.retry_max_ms < self.engine.retry_base_ms {
            return invalid("engine.retry_base_ms", "must be > 0 and <= engine.retry_max_ms");
        }
        if self.server.max_body_bytes < 1024 {
            return invalid("server.max_body_bytes", "must be at least 1024");
        }
        if self.server.max_campaign_body_bytes < self.server.max_body_bytes {
            return invalid("server.max_campaign_body_bytes", "must be at least server.max_body_bytes");
        }
        for kind in ProviderKind::ALL {
            let Some(limits) = self.providers.limits.get(&kind) else {
                return Err(ConfigError::Invalid {
                    field: "providers.limits",
                    message: format!("missing limits for provider `{}`", kind.as_str()),
                });
            };
            if limits.rate_per_second == 0
                || limits.burst == 0
                || limits.max_in_flight == 0
                || limits.max_requests == Some(0)
            {
                return Err(ConfigError::Invalid {
                    field: "providers.limits",
                    message: format!(
                        "`{}`: rate_per_second, burst, max_in_flight and max_requests must be at least 1",
                        kind.as_str()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Base URL for provider callbacks.
    pub fn public_url(&self) -> String {
        if self.server.public_url.is_empty() {
            format!("http://{}", self.server.listen)
        } else {
            self.server.public_url.trim_end_matches('/').to_string()
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures return figment::Error
mod tests {
    use super::*;

    fn config_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[test]
    fn default_config_loads_and_validates() {
        let s = Settings::load(&config_dir(), "default", Env::prefixed("HERALD_TEST_NONE__")).unwrap();
        assert_eq!(s.profile, "default");
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert!(s.sandbox.enabled);
    }

    #[test]
    fn environment_overrides_files() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALDX__ENGINE__SHARDS", "3");
            let env = Env::prefixed("HERALDX__").split("__").lowercase(true);
            let s = Settings::load(&config_dir(), "default", env).unwrap();
            assert_eq!(s.engine.shards, 3);
            Ok(())
        });
    }

    #[test]
    fn invalid_values_name_their_field() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALDY__ENGINE__SHARDS", "0");
            let env = Env::prefixed("HERALDY__").split("__").lowercase(true);
            let err = Settings::load(&config_dir(), "default", env).unwrap_err();
            assert!(err.to_string().contains("engine.shards"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALDZ__ENGINE__SHARDZ", "3");
            let env = Env::prefixed("HERALDZ__").split("__").lowercase(true);
            let err = Settings::load(&config_dir(), "default", env).unwrap_err();
            assert!(err.to_string().contains("shardz"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_store_backend_is_checked_and_redis_settings_default() {
        let s = Settings::load(&config_dir(), "default", Env::prefixed("HERALD_TEST_NONE__")).unwrap();
        assert_eq!((s.store.backend.as_str(), s.store.redis.prefix.as_str()), ("embedded", "herald:"));
        assert_eq!(s.store.redis.url.expose(), "redis://127.0.0.1:6379");
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALDB__STORE__BACKEND", "postgres");
            let env = Env::prefixed("HERALDB__").split("__").lowercase(true);
            let err = Settings::load(&config_dir(), "default", env).unwrap_err();
            assert!(err.to_string().contains("store.backend"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALDR__STORE__BACKEND", "redis");
            jail.set_env("HERALDR__STORE__REDIS__INBOX_CAP", "50");
            let env = Env::prefixed("HERALDR__").split("__").lowercase(true);
            let s = Settings::load(&config_dir(), "default", env).unwrap();
            assert_eq!((s.store.backend.as_str(), s.store.redis.inbox_cap), ("redis", 50));
            assert_eq!(s.store.redis.command_timeout_ms, 2000, "unset keys keep their defaults");
            Ok(())
        });
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
    }
}
