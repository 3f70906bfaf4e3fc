//! The provider sandbox: a simulator that speaks the providers' protocols on loopback, records every message it
//! accepts, and can be told to be slow or to fail. Runs as `herald sandbox` or in-process beside `herald serve`.

mod settings;
pub use settings::{FaultSettings, SandboxSettings};
