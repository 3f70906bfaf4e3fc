//! The self-contained setup: `herald sandbox` and `herald serve` as two processes of the `herald` binary beside
//! this one, on free loopback ports, with a temporary data directory. Herald's own sandbox is off and its
//! providers point at the external one (FCM and APNs over its TLS listener, trusting the CA it writes out),
//! with the provider rate limits raised so they are not what gets measured. Both are killed when this is
//! dropped; their output goes to `sandbox.log` and `herald.log` in the run's directory.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::Args;

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Provider limits far above what one machine can send, so Herald's dispatchers are not throttled on purpose.
const RAISED_RATE: &str = "1000000";
const RAISED_BURST: &str = "100000";
const PROVIDERS: [&str; 5] = ["FCM", "APNS", "SMTP", "TWILIO", "BIZPPURIO"];

/// The two spawned processes and where they answer.
pub struct Spawned {
    sandbox: Child,
    /// None until started.
    herald: Option<Child>,
    dir: PathBuf,
    pub herald_url: String,
    /// The sandbox's plain HTTP listener (admin API, Twilio, Bizppurio).
    pub sandbox_url: String,
    /// Its TLS listener (FCM, APNs), as Herald reaches it.
    pub sandbox_tls_url: String,
    /// The CA that signed the TLS listener's certificate.
    pub ca_file: PathBuf,
}

/// Peak resident memory (bytes, Linux `VmHWM`) and CPU time (seconds, user + system) of the spawned
/// processes, and this tool's own CPU time: on a shared machine, who used the cores.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub herald_rss_max: Option<u64>,
    pub sandbox_rss_max: Option<u64>,
    pub herald_cpu_s: Option<f64>,
    pub sandbox_cpu_s: Option<f64>,
    pub loadtest_cpu_s: Option<f64>,
}

impl Usage {
    /// Only this tool's CPU time (the processes were not spawned).
    pub fn own() -> Usage {
        Usage { loadtest_cpu_s: cpu_seconds("self"), ..Usage::default() }
    }
}

impl Spawned {
    /// Starts the sandbox, then Herald, and waits until Herald is ready.
    pub async fn start(args: &Args, out: &Path, run_id: &str) -> Result<Spawned, String> {
        let binary = herald_binary(args)?;
        let config = config_dir(args)?;
        let dir = std::env::temp_dir().join(format!("herald-loadtest-{run_id}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let ca_file = dir.join("sandbox-ca.pem");
        let herald_port = free_port()?;
        let herald_url = format!("http://127.0.0.1:{herald_port}");

        let sandbox_log = out.join("sandbox.log");
        let (sandbox_out, sandbox_err) = log_files(&sandbox_log)?;
        let sandbox = Command::new(&binary)
            .arg("sandbox")
            .arg("--config-dir")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--smtp-listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
            .arg("--ca-out")
            .arg(&ca_file)
            .arg("--report-url")
            .arg(format!("{herald_url}/webhooks/alimtalk"))
            .env("RUST_LOG", child_log_filter())
            .stdin(Stdio::null())
            .stdout(sandbox_out)
            .stderr(sandbox_err)
            .spawn()
            .map_err(|e| format!("starting {} sandbox: {e}", binary.display()))?;
        // From here on, dropping `spawned` kills what was started.
        let mut spawned = Spawned {
            sandbox,
            herald: None,
            dir,
            herald_url,
            sandbox_url: String::new(),
            sandbox_tls_url: String::new(),
            ca_file,
        };
        let line = wait_for_line(&mut spawned.sandbox, &sandbox_log, "sandbox listening on ")?;
        let (http, tls, smtp) = parse_sandbox_line(&line).ok_or_else(|| format!("unexpected sandbox line: {line}"))?;
        spawned.sandbox_url = format!("http://{http}");
        spawned.sandbox_tls_url = format!("https://{tls}");

        let herald_log = out.join("herald.log");
        let (herald_out, herald_err) = log_files(&herald_log)?;
        let mut serve = Command::new(&binary);
        serve
            .arg("serve")
            .arg("--config-dir")
            .arg(&config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{herald_port}"))
            .arg("--data-dir")
            .arg(spawned.dir.join("data"))
            .arg("--no-sandbox")
            .env("RUST_LOG", child_log_filter())
            .env("HERALD__PROVIDERS__EXTRA_ROOT_CA_FILE", &spawned.ca_file)
            .env("HERALD__PROVIDERS__FCM__BASE_URL", &spawned.sandbox_tls_url)
            .env("HERALD__PROVIDERS__FCM__TOKEN_URI", format!("{}/token", spawned.sandbox_tls_url))
            .env("HERALD__PROVIDERS__APNS__BASE_URL", &spawned.sandbox_tls_url)
            .env("HERALD__PROVIDERS__TWILIO__BASE_URL", &spawned.sandbox_url)
            .env("HERALD__PROVIDERS__BIZPPURIO__BASE_URL", &spawned.sandbox_url)
            .env("HERALD__PROVIDERS__SMTP__HOST", smtp.split(':').next().unwrap_or("127.0.0.1"))
            .env("HERALD__PROVIDERS__SMTP__PORT", smtp.rsplit(':').next().unwrap_or_default());
        for provider in PROVIDERS {
            // The caller's own HERALD__ settings win: they are what they want measured.
            for (key, value) in [("RATE_PER_SECOND", RAISED_RATE), ("BURST", RAISED_BURST)] {
                let name = format!("HERALD__PROVIDERS__LIMITS__{provider}__{key}");
                if std::env::var_os(&name).is_none() {
                    serve.env(name, value);
                }
            }
        }
        let herald = spawned.herald.insert(
            serve
                .stdin(Stdio::null())
                .stdout(herald_out)
                .stderr(herald_err)
                .spawn()
                .map_err(|e| format!("starting {} serve: {e}", binary.display()))?,
        );
        wait_for_line(herald, &herald_log, "herald listening on ")?;
        wait_ready(&spawned.herald_url).await?;
        Ok(spawned)
    }

    pub fn usage(&self) -> Usage {
        let herald = self.herald.as_ref().map(|h| h.id().to_string());
        let sandbox = self.sandbox.id().to_string();
        Usage {
            herald_rss_max: herald.as_deref().and_then(peak_rss),
            sandbox_rss_max: peak_rss(&sandbox),
            herald_cpu_s: herald.as_deref().and_then(cpu_seconds),
            sandbox_cpu_s: cpu_seconds(&sandbox),
            loadtest_cpu_s: cpu_seconds("self"),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for child in self.herald.iter_mut().chain([&mut self.sandbox]) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn herald_binary(args: &Args) -> Result<PathBuf, String> {
    let binary = match &args.herald_bin {
        Some(path) => path.clone(),
        None => {
            let me = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
            me.with_file_name("herald")
        }
    };
    if !binary.is_file() {
        return Err(format!(
            "no herald binary at {} (build both: `cargo build --release --workspace`, or pass \
             --herald-bin, or --herald and --sandbox for running ones)",
            binary.display()
        ));
    }
    Ok(binary)
}

/// `--config-dir`, else `./config`, else the source tree's `config/` this tool was built from.
fn config_dir(args: &Args) -> Result<PathBuf, String> {
    let candidates = match &args.config_dir {
        Some(dir) => vec![dir.clone()],
        None => vec![PathBuf::from("config"), Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")],
    };
    candidates
        .into_iter()
        .find(|dir| dir.join("default.toml").is_file())
        .ok_or_else(|| "no Herald configuration found (config/default.toml); pass --config-dir".to_string())
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("finding a free port: {e}"))
}

/// A child's log as its stdout and stderr (both appending), emptied first: `wait_for_line` must not find a line
/// an earlier run left in a reused `--out` (it pointed Herald at that run's sandbox, long gone).
fn log_files(path: &Path) -> Result<(Stdio, Stdio), String> {
    let open = || File::options().append(true).open(path);
    let files = File::create(path).and_then(|_| Ok((open()?, open()?)));
    let (stdout, stderr) = files.map_err(|e| format!("opening {}: {e}", path.display()))?;
    Ok((stdout.into(), stderr.into()))
}

/// Waits for a line starting with `prefix` in a child's log; fails with the log's end if the child exits first.
fn wait_for_line(child: &mut Child, log: &Path, prefix: &str) -> Result<String, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut text = String::new();
        if let Ok(mut file) = File::open(log) {
            let _ = file.read_to_string(&mut text);
        }
        if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
            return Ok(line.to_string());
        }
        let tail: String =
            text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{} exited ({status}) before saying `{prefix}…`:\n{tail}", log.display()));
        }
        if Instant::now() > deadline {
            return Err(format!("no `{prefix}…` in {} after {START_TIMEOUT:?}:\n{tail}", log.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The HTTP, TLS and SMTP addresses of `sandbox listening on http://A (https B, smtp C)`.
fn parse_sandbox_line(line: &str) -> Option<(String, String, String)> {
    let rest = line.strip_prefix("sandbox listening on http://")?;
    let (http, rest) = rest.split_once(" (https ")?;
    let (tls, rest) = rest.split_once(", smtp ")?;
    let smtp = rest.strip_suffix(')')?;
    Some((http.to_string(), tls.to_string(), smtp.to_string()))
}

async fn wait_ready(herald: &str) -> Result<(), String> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let ready = http.get(format!("{herald}/readyz")).send().await.is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{herald}/readyz did not answer 200 within {START_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Peak resident set of a process (`pid` or `self`), from `/proc/<pid>/status`.
fn peak_rss(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

/// User plus system CPU seconds of a process (`pid` or `self`), from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> Option<f64> {
    parse_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Linux's USER_HZ, the unit of `/proc/<pid>/stat` times, is 100 on every architecture it exports.
const TICKS_PER_SECOND: f64 = 100.0;

fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses; the fields after its last `)` start at 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / TICKS_PER_SECOND)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.trim_start_matches("VmHWM:").trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

/// The spawned processes log warnings and errors only, unless `HERALD_LOADTEST_LOG` gives their filter
/// (e.g. `info,herald::store=debug`).
fn child_log_filter() -> String {
    std::env::var("HERALD_LOADTEST_LOG").unwrap_or_else(|_| "warn".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_line_gives_its_three_addresses() {
        let line = "sandbox listening on http://127.0.0.1:41000 (https 127.0.0.1:41001, smtp 127.0.0.1:41002)";
        assert_eq!(
            parse_sandbox_line(line),
            Some(("127.0.0.1:41000".into(), "127.0.0.1:41001".into(), "127.0.0.1:41002".into()))
        );
        assert_eq!(parse_sandbox_line("herald listening on http://127.0.0.1:1"), None);
    }

    #[test]
    fn peak_memory_is_read_from_proc_status() {
        assert_eq!(parse_vm_hwm("Name:\therald\nVmPeak:\t  99 kB\nVmHWM:\t  123456 kB\n"), Some(123_456 * 1024));
        assert_eq!(parse_vm_hwm("Name:\therald\n"), None);
        assert!(peak_rss("self").is_some_and(|bytes| bytes > 0), "this process has a peak");
    }

    #[test]
    fn cpu_time_is_read_from_proc_stat() {
        let stat = "4242 (herald (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_cpu_seconds(stat), Some(3.25));
        assert_eq!(parse_cpu_seconds("4242 (herald) S 1"), None);
        assert!(cpu_seconds("self").is_some());
    }
}
